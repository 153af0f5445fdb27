"""Per-particle random parameters (states, poses, shifts, CTF) and the noise, from streams keyed by the seed.

Every draw comes from its own generator ``default_rng([seed, tag])`` (labels 1, rotations 2, shifts 3, CTF 4, noise
``[seed, 99, block]``), so it depends only on the seed and the particle index, never on the chunking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryofire_app.io import InputError
from cryofire_app.physics import quaternion_to_matrix
from cryofire_app.simulate.config import NOISE_BLOCK, SimulationConfig


@dataclass
class _Params:
    labels: np.ndarray       # (N,) int64
    u: np.ndarray | None     # (N,) hinge coordinate in [0, 1]
    rot: np.ndarray          # (N, 3, 3)
    trans_px: np.ndarray     # (N, 2)
    ctf: np.ndarray          # (N, 9)


def _rng(seed: int, tag: int) -> np.random.Generator:
    """The generator of one purpose (``tag``) of a run seeded with ``seed``."""
    return np.random.default_rng([seed, tag])


def _draw_labels(cfg: SimulationConfig, n: int, n_states: int) -> tuple[np.ndarray, np.ndarray | None]:
    """State labels (N,) int64 and, for hinge runs, the hinge coordinate u (N,) in [0, 1]: uniform for a continuous
    hinge (label = its bin of K), else the state's step ``label / (K - 1)``; labels follow ``cfg.fractions``."""
    hinge = cfg.hinge
    u = None
    if hinge.enabled and hinge.continuous:
        u = _rng(cfg.seed, 1).uniform(0.0, 1.0, n)
        labels = np.minimum((u * n_states).astype(np.int64), n_states - 1)
    else:
        frac = np.ones(n_states) if cfg.fractions is None else np.asarray(cfg.fractions, dtype=np.float64)
        labels = _rng(cfg.seed, 1).choice(n_states, size=n, p=frac / frac.sum()).astype(np.int64)
        if hinge.enabled:
            u = labels / (n_states - 1)
    return labels, u


def _draw_ctf(cfg: SimulationConfig, n: int, D: int, apix: float) -> np.ndarray:
    """cryoDRGN CTF rows (N, 9) [D, apix, dfU, dfV, dfang, kV, Cs, w, phase] (defocus in A, angle in degrees)."""
    lo, hi = (v * 1e4 for v in cfg.defocus_um)
    g = _rng(cfg.seed, 4)
    if cfg.defocus_dist == "uniform":
        df = g.uniform(lo, hi, n)
    elif cfg.defocus_dist == "lognormal":
        df = np.clip(np.exp(g.normal(0.5 * (math.log(lo) + math.log(hi)), math.log(hi / lo) / 4, n)), lo, hi)
    else:
        raise InputError(f"unknown defocus distribution {cfg.defocus_dist!r} (uniform or lognormal)")
    astig = g.uniform(0.0, cfg.astigmatism_A, n)
    ang = g.uniform(0.0, 180.0, n)
    return np.stack([np.full(n, D, dtype=np.float64), np.full(n, apix), df + astig / 2, df - astig / 2, ang,
                     np.full(n, cfg.kv), np.full(n, cfg.cs_mm), np.full(n, cfg.amp_contrast), np.zeros(n)], 1)


def _draw_params(cfg: SimulationConfig, n: int, n_states: int, D: int, apix: float, meta: dict | None) -> _Params:
    """All per-particle random parameters, from streams keyed by (seed, purpose): independent of chunking.

    Rotations, shifts (px) and CTF rows that ``meta`` holds (not None) are used instead of random ones."""
    labels, u = _draw_labels(cfg, n, n_states)
    if meta is not None and meta.get("rot") is not None:
        rot = meta["rot"]
    else:
        q = torch.from_numpy(_rng(cfg.seed, 2).standard_normal((n, 4)))
        rot = quaternion_to_matrix(q).numpy()
    if meta is not None and meta.get("trans_px") is not None:
        trans = meta["trans_px"]
    else:
        trans = _rng(cfg.seed, 3).uniform(-cfg.max_shift_px, cfg.max_shift_px, (n, 2)) if cfg.max_shift_px > 0 \
            else np.zeros((n, 2))
    if meta is not None and meta.get("ctf") is not None:
        ctf = meta["ctf"].astype(np.float64)
    else:
        ctf = _draw_ctf(cfg, n, D, apix)
    return _Params(labels=labels, u=u, rot=np.asarray(rot, dtype=np.float64), trans_px=np.asarray(trans, np.float64),
                   ctf=ctf)


def _noise(seed: int, start: int, stop: int, D: int) -> np.ndarray:
    """Unit white noise (stop-start, D, D) float32 for particles [start, stop), from per-block streams."""
    out = []
    for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        block = np.random.default_rng([seed, 99, b]).standard_normal((NOISE_BLOCK, D, D), dtype=np.float32)
        lo = max(start, b * NOISE_BLOCK) - b * NOISE_BLOCK
        hi = min(stop, (b + 1) * NOISE_BLOCK) - b * NOISE_BLOCK
        out.append(block[lo:hi])
    return np.concatenate(out, 0)
