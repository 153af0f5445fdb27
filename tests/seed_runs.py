"""Run folders made without training, for the analysis and Latent-dock tests of the seed's heterogeneity (issue 20).

`make_run` writes what `cryofire train` leaves behind and `analysis.Run` reads: config.json, checkpoints/last.pt (a
randomly initialised model at box 16: it decodes real, meaningless volumes in milliseconds), latents.npz with a given
z, and seed_states.npz in the format training/trainer.py writes after issue 20 (index, state, state_score and the
optional coords / kind). Seconds, not the minutes of a training run; what is under test is the bookkeeping.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_run(folder: Path, z: np.ndarray, seed_states: dict | None = None, D: int = 16, apix: float = 3.0) -> Path:
    """A run folder with latents z (N, d) (particle index = row + 1000, random poses, no validation flag beyond
    the rows the seed states leave out) and, when given, ``seed_states`` written verbatim to seed_states.npz."""
    import torch

    from cryofire_app.training.build import build_model
    from cryofire_app.training.checkpoint import atomic_torch_save
    from cryofire_app.training.config import DecoderConfig, EncoderConfig, TrainConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    z = np.asarray(z, np.float32)
    n, d = z.shape
    cfg = TrainConfig.of(outdir=str(folder), D=D, zdim=d, encoder=EncoderConfig(channels=(8, 16), hidden=32),
                         decoder=DecoderConfig(grid_channels=4, grid_hidden=16))
    cfg.save(folder / "config.json")
    torch.manual_seed(0)
    model = build_model(cfg, D)
    atomic_torch_save({"config": cfg.to_dict(), "model": model.state_dict(), "D": D, "apix": apix, "sigma_ht": 1.0,
                       "mask_radius": D // 2, "images_seen": 1000}, folder / "checkpoints" / "last.pt")
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    rot = (q * np.sign(np.linalg.det(q))[:, None, None]).astype(np.float32)
    val = np.zeros(n, np.int8)
    if seed_states is not None:
        val[np.setdiff1d(np.arange(n), seed_states["index"])] = 1
    with open(folder / "latents.npz", "wb") as fh:
        np.savez(fh, index=np.arange(n, dtype=np.int64) + 1000, z=z, rot=rot, trans=np.zeros((n, 2), np.float32),
                 val=val, apix=np.float64(apix), D=np.int64(D))
    if seed_states is not None:
        with open(folder / "seed_states.npz", "wb") as fh:
            np.savez(fh, **seed_states)
    return folder


def continuous_case(n: int = 400, held_out: int = 40, d: int = 4, seed: int = 0) -> tuple[np.ndarray, dict, np.ndarray]:
    """A continuous motion: z runs along a line (uniform position t, small noise), the seed found no discrete
    states (K = 1, kind "continuous") and gives each training particle 2 coordinates, the first a noisy, monotone
    function of t. Returns z (n, d), the seed_states arrays, t (n,)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, n)
    direction = rng.normal(size=d)
    z = (t[:, None] * 3 * direction / np.linalg.norm(direction) + 0.15 * rng.normal(size=(n, d))).astype(np.float32)
    rows = np.sort(rng.permutation(n)[: n - held_out]).astype(np.int64)
    c1 = np.tanh(1.5 * t[rows]) + 0.05 * rng.normal(size=len(rows))
    coords = np.stack([(c1 - c1.mean()) / c1.std(), rng.normal(size=len(rows))], 1).astype(np.float32)
    arrays = dict(index=rows, state=np.zeros(len(rows), np.int64), state_score=coords[:, 0].copy(), coords=coords,
                  kind=np.array("continuous"))
    return z, arrays, t


def three_state_case(n: int = 420, held_out: int = 42, d: int = 4, seed: int = 1) -> tuple[np.ndarray, dict,
                                                                                               np.ndarray]:
    """Three discrete states (shares 50/30/20 %) as well separated blobs of z; the seed's labels are the truth
    (0 = the largest), with 1 coordinate. Returns z (n, d), the seed_states arrays, the true state (n,)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, n, p=[0.5, 0.3, 0.2]).astype(np.int64)
    centres = np.zeros((3, d))
    centres[1, 0] = centres[2, 1] = 8.0
    z = (centres[truth] + rng.normal(size=(n, d))).astype(np.float32)
    rows = np.sort(rng.permutation(n)[: n - held_out]).astype(np.int64)
    coords = (z[rows, :1] - z[rows, :1].mean()) / z[rows, :1].std()
    arrays = dict(index=rows, state=truth[rows], state_score=coords[:, 0].astype(np.float32),
                  coords=coords.astype(np.float32), kind=np.array("discrete"))
    return z, arrays, truth
