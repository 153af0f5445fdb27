"""Ab initio seeding: coarse-to-fine exhaustive + local pose search against an explicit Hartley voxel volume, then a
discrete heterogeneity step with the poses fixed.

Schedule (all sizes in :class:`SeedConfig`):
1. *Ab initio* on up to ``n_subset`` particles at a tiny box (Fourier crop to ``box_global``): from ``n_restarts``
   random starts (a few positive Gaussian blobs, signed like the data), ``iters_global`` rounds of expectation-
   maximisation over the full shared grid, SO(3) (randomly re-oriented every round) x shifts, with the exact posterior
   (noise variance re-estimated every round) and Wiener back-projection, while the frequency radius marches from
   ``radius_global[0]`` to ``[1]``. Starts are halved by residual noise variance (successive halving); the best wins.
   Measured: a round blob start never leaves its symmetric fixed point; hard assignment or top-k posteriors and
   mini-batches stall at SNR 0.1; the full posterior over all particles converges.
2. ``iters_search`` rounds of exhaustive projection matching of **all** particles at ``box_search`` (grid x shifts,
   keep ``n_hypotheses`` rotations each, reconstruct from the best): repairs the particles the low-resolution start
   left wrong (measured on issue 5's set: 34 -> 10 -> 7 degrees median view error over three rounds).
   Then local refinement (27 rotations x 9 shifts around each pose, all hypotheses in the first round, step halved
   every round down to ``min_step_deg``) at the boxes of ``boxes_local``; the radius at each box follows the spectral
   SNR of the current reconstruction (frequency marching). Then one exhaustive re-search at ``box_research`` with the
   refined map (the current pose stays a candidate) and one local round per box from there up.
3. Heterogeneity with the poses fixed (:mod:`.hetero`, at ``box_hetero``): the residual directions that reproduce
   across two halves give each particle continuous coordinates; the number of discrete states is chosen from them
   (``n_states = 0``) or forced (``n_states >= 2``); one state means continuous or no heterogeneity.
4. Final consensus (and per-state) reconstruction at the input box.

Conventions (docs/design.md): ``rot (N, 3, 3)`` cryoDRGN rows (``k_vol = k_img @ rot``), ``trans_px (N, 2)`` in pixels
of the input box, ``(tx, ty)`` = (columns, rows), the shift that re-centres the particle. Volumes ``(z, y, x)``, real
space, line-integral voxel units of the normalised data. The CTF is cryoDRGN's (``C(0) = -w``): data simulated or
extracted with the RELION sign (particles white) give a map of negative density; ``history['density_sign']`` says which.
The hand of an ab initio map is not determined by the data: ``history['hand'] = 'undetermined'``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator

import numpy as np
import torch

from .data import prepare_particles
from .hetero import HeteroBasis
from .seed_stages import (  # noqa: F401  (density_sign, _final_maps: the seed's public helpers)
    SeedRun,
    _final_maps,
    abinit_stage,
    density_sign,
    final_stage,
    global_stage,
    hetero_stage,
    local_stage,
    research_stage,
)
from .volume import resize_volume  # noqa: F401  (the seed's public helper)


@dataclass
class SeedConfig:
    """Settings of :func:`seed_abinit`. Boxes are image boxes in pixels (even); radii are in Fourier pixels of the box
    they apply to (``D // 2`` = Nyquist); shifts are pixels of the **input** box."""

    box_global: int = 16
    radius_global: tuple[float, float] = (4.0, 5.5)
    n_subset: int = 5000
    n_restarts: int = 2
    n_blobs: int = 4
    iters_global: int = 12
    positivity: bool = False
    grid_dirs: int = 192
    grid_psi: int = 24
    max_shift_px: float = 4.0
    n_hypotheses: int = 4
    box_search: int = 24
    iters_search: int = 3
    boxes_local: tuple[int, ...] = (24, 32, 48, 64)
    iters_local: int = 2
    box_research: int = 32  # after the local refinement: one exhaustive pass at this box with the refined map (0: off)
    research_topk: int = 2  # grid poses offered to each particle beside its current one
    min_step_deg: float = 0.5  # local steps halve from half the grid spacing down to this
    min_shift_step_px: float = 0.125  # input-box px
    max_radius_frac: float = 0.9  # cap of the refinement radius as a fraction of the box's Nyquist
    ssnr_threshold: float = 1.0  # frequency marching: refine up to the shell where the spectral SNR drops below this
    mask_radius_frac: float = 0.9  # real-space soft sphere, fraction of the half box
    n_states: int = 0  # 0: the number of states from the data (reconstruct.hetero); 1: no heterogeneity step; K >= 2
    box_hetero: int = 48  # the residual directions need box 48 radius 16 on the 70S two-state set, not box 32
    hetero_radius_frac: float = 0.67  # floor of the heterogeneity radius, fraction of box_hetero's Nyquist
    hetero_components: int = 3  # residual directions tried (each kept only if it reproduces across halves)
    hetero_max_states: int = 6  # largest number of discrete states tried when n_states = 0
    hetero_scale_fit: bool = True  # fit a contrast scale per particle before the residual analysis
    iters_als: int = 20  # ALS rounds per residual direction (stops when it turns by <= als_tol)
    als_tol: float = 1e-5
    seed: int = 0
    batch: int = 32

    def __post_init__(self):
        for b in (self.box_global, self.box_hetero, *self.boxes_local):
            if b % 2 or b < 8:
                raise ValueError(f"boxes must be even and >= 8, got {b}")
        if self.n_restarts < 1 or self.iters_global < 1 or self.n_hypotheses < 1:
            raise ValueError("n_restarts, iters_global and n_hypotheses must be >= 1")
        if self.n_states < 0:
            raise ValueError("n_states must be >= 0 (0: chosen from the data)")
        if self.hetero_components < 1 or self.hetero_max_states < 1:
            raise ValueError("hetero_components and hetero_max_states must be >= 1")


RETIRED_KEYS = frozenset({"iters_hetero"})   # SeedConfig fields that no longer exist; ignored in old configs


def seed_config_from(overrides: dict | None) -> SeedConfig:
    """A SeedConfig from a dict of field overrides (TrainConfig.seeded.seed_config), ignoring retired fields of older
    runs."""
    return SeedConfig(**{k: v for k, v in (overrides or {}).items() if k not in RETIRED_KEYS})


@dataclass
class SeedEvent:
    """Progress report. ``stage`` in {'prepare', 'abinit', 'global', 'local', 'hetero', 'final', 'done'}; ``step`` of
    ``total`` within the stage; ``metrics`` (floats); at the end of a stage ``rot``/``trans_px``/``state`` hold the
    current estimate for every particle and ``volume`` the current consensus (real space, at the stage's box)."""

    stage: str
    step: int
    total: int
    elapsed_s: float
    message: str
    metrics: dict = field(default_factory=dict)
    rot: np.ndarray | None = None
    trans_px: np.ndarray | None = None
    state: np.ndarray | None = None
    volume: np.ndarray | None = None


@dataclass
class SeedResult:
    """``rot (N, 3, 3)``, ``trans_px (N, 2)`` (input-box px), ``volume (D, D, D)`` consensus; ``state (N,)`` int
    labels (0 = the largest; all 0 for one state) or None (``n_states == 1``: no heterogeneity step), ``state_score
    (N,)`` a 1D heterogeneity coordinate (two states: log posterior odds of state 1) or None, ``coords (N, q)`` the
    continuous heterogeneity coordinates (reconstruct.hetero; q may be 0) or None, ``hetero_kind`` 'discrete',
    'continuous' or 'homogeneous' (None without the step), ``state_volumes (K, D, D, D)`` for K >= 2 states or None;
    ``history`` a list of event summaries plus run facts."""

    rot: np.ndarray
    trans_px: np.ndarray
    volume: np.ndarray
    state: np.ndarray | None
    history: dict
    state_score: np.ndarray | None = None
    state_volumes: np.ndarray | None = None
    coords: np.ndarray | None = None
    hetero_kind: str | None = None
    basis: HeteroBasis | None = None   # what other particles' coordinates need (reconstruct.coordinates)


def iter_seed_abinit(images, ctf_params=None, config: SeedConfig | None = None,
                     device: torch.device | str = "cpu") -> Generator[SeedEvent, None, SeedResult]:
    """Generator form of :func:`seed_abinit`: yields :class:`SeedEvent` and returns the :class:`SeedResult`
    (``result = yield from iter_seed_abinit(...)``). The stages are reconstruct.seed_stages'."""
    cfg = config or SeedConfig()
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict = {"config": asdict(cfg), "events": [], "hand": "undetermined"}

    def ev(stage, step, total, msg, metrics=None, **kw) -> SeedEvent:
        e = SeedEvent(stage, step, total, time.time() - t0, msg, dict(metrics or {}), **kw)
        history["events"].append({"stage": stage, "step": step, "total": total, "elapsed_s": e.elapsed_s,
                                  "message": msg, "metrics": e.metrics})
        return e

    parts = prepare_particles(images, ctf_params, device=device)
    D = parts.D
    run = SeedRun(cfg, parts, gen, ev, history)
    run.boxes = sorted({min(b, D) for b in cfg.boxes_local if b >= min(cfg.box_search, D)}
                       | {min(cfg.box_search, D)})
    yield ev("prepare", 1, 1, f"{parts.n} particles, box {D}, CTF {'yes' if parts.ctf is not None else 'no'}")
    for stage in (abinit_stage, global_stage, local_stage, research_stage):
        yield from stage(run)
    history["final_radius_px"] = run.r_cur
    history["final_refine_box"] = run.d_prev
    history["data_scale"] = float(parts.scale)
    yield from hetero_stage(run)
    final_stage(run)
    return (yield from _finish(run, t0))


def _finish(run: SeedRun, t0: float) -> Generator[SeedEvent, None, SeedResult]:
    """The 'done' event and the result."""
    history, het = run.history, run.hetero
    volume_np = run.volume.numpy()
    history["density_sign"] = density_sign(volume_np)
    history["wall_s"] = time.time() - t0
    yield run.ev("done", 1, 1, f"done in {history['wall_s']:.0f} s; density sign {history['density_sign']:+d}; "
                 "hand undetermined", {"wall_s": history["wall_s"]}, rot=run.rot.numpy(), trans_px=run.trans.numpy(),
                 state=None if het is None else np.asarray(het.labels), volume=volume_np)
    return SeedResult(run.rot.numpy().astype(np.float32), run.trans.numpy().astype(np.float32),
                      volume_np.astype(np.float32), None if het is None else np.asarray(het.labels, dtype=np.int64),
                      history, None if het is None or het.score is None else np.asarray(het.score, dtype=np.float32),
                      run.state_vols, None if het is None else np.asarray(het.coords, dtype=np.float32),
                      None if het is None else het.kind, None if het is None else het.basis)


def seed_abinit(images, ctf_params=None, config: SeedConfig | None = None, device: torch.device | str = "cpu",
                callback: Callable[[SeedEvent], None] | None = None) -> SeedResult:
    """Run the seeding stage and return a :class:`SeedResult`; ``callback`` receives every :class:`SeedEvent`.

    ``images``: ``(N, D, D)`` float32 array-like (D even); ``ctf_params``: ``(N, 9)`` cryoDRGN ctf.pkl rows or None.
    Pure torch/numpy; uses the CPU threads torch is set to.
    """
    g = iter_seed_abinit(images, ctf_params, config, device)
    while True:
        try:
            e = next(g)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(e)
