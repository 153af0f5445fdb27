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

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator

import numpy as np
import torch

from ..physics.fft import fourier_resize
from ..physics.rotations import random_rotations
from .data import Particles, StageData, prepare_particles, stage_data
from .final import chunk_size
from .grids import grid_spacing_deg, local_perturbations, shift_grid, so3_grid
from .hetero import HeteroBasis, HeteroConfig, iter_analyse
from .search import backproject, em_search, global_search, local_search, residual_sigma2, scores_at, slices
from .volume import HartleyAccumulator, slicing_volume


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


def _solve(acc: HartleyAccumulator, sigma2: float, cfg: SeedConfig) -> tuple[torch.Tensor, dict]:
    return acc.solve(sigma2, mask_radius=cfg.mask_radius_frac * acc.d / 2)


def _ssnr_radius(info: dict, d_from: int, d_to: int, cfg: SeedConfig, floor: float) -> float:
    """Radius (Fourier px of box ``d_to``) of the last shell of the box-``d_from`` reconstruction whose spectral SNR is
    above ``cfg.ssnr_threshold`` (shells are in units of ``1/(2 d_from)``)."""
    ssnr = info["ssnr"].numpy()
    last = 1  # last shell of the contiguous run (from shell 1) with SSNR >= threshold
    while last + 1 < len(ssnr) and ssnr[last + 1] >= cfg.ssnr_threshold:
        last += 1
    r = last / 2.0 * d_to / d_from  # cycles/px * d_to
    return float(np.clip(r, floor, cfg.max_radius_frac * d_to / 2))


def _reconstruct(data: StageData, rot, trans, sigma2: float, cfg: SeedConfig, weight=None, rows=None):
    acc = HartleyAccumulator(data.d)
    backproject(acc, data, rot, trans, weight=weight, rows=rows)
    return _solve(acc, sigma2, cfg)


def _final_maps(parts: Particles, rot: torch.Tensor, trans: torch.Tensor, vol: torch.Tensor, state, cfg: SeedConfig,
                chunk: int | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """The consensus map and (K >= 2 states) one map per state at the input box's full Nyquist, with the noise
    variance of the current map ``vol`` at the final poses (``trans`` px of the input box). The full-lattice data are
    made ``chunk`` particles at a time (default final.chunk_size), so the memory grows with neither N nor D."""
    D = parts.D
    chunk = chunk or chunk_size(D)
    labels = None if state is None or int(np.max(state)) < 1 else torch.as_tensor(np.asarray(state))
    acc = HartleyAccumulator(D)
    accs = [] if labels is None else [HartleyAccumulator(D) for _ in range(int(labels.max()) + 1)]
    vol_d = slicing_volume(resize_volume(vol, D))
    resid = 0.0
    for s in range(0, parts.n, chunk):
        idx = torch.arange(s, min(s + chunk, parts.n))
        fd = stage_data(parts, D, D // 2, idx)
        backproject(acc, fd, rot[idx], trans[idx])
        resid += residual_sigma2(scores_at(vol_d, fd, rot[idx], trans[idx]), fd) * len(idx)
        for k, a in enumerate(accs):
            sel = torch.nonzero(labels[idx] == k).reshape(-1)
            if len(sel):
                backproject(a, fd, rot[idx][sel], trans[idx][sel], rows=sel)
    sig_final = resid / parts.n
    volume, _ = _solve(acc, sig_final, cfg)
    if labels is None:
        return volume, None
    svols = [_solve(a, sig_final, cfg)[0] if int((labels == k).sum()) else torch.zeros(D, D, D)
             for k, a in enumerate(accs)]
    return volume, torch.stack(svols).numpy()


def iter_seed_abinit(images, ctf_params=None, config: SeedConfig | None = None,
                     device: torch.device | str = "cpu") -> Generator[SeedEvent, None, SeedResult]:
    """Generator form of :func:`seed_abinit`: yields :class:`SeedEvent` and returns the :class:`SeedResult`
    (``result = yield from iter_seed_abinit(...)``)."""
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
    N, D = parts.n, parts.D
    boxes = sorted({min(b, D) for b in cfg.boxes_local if b >= min(cfg.box_search, D)} | {min(cfg.box_search, D)})
    d0 = min(cfg.box_global, D)
    yield ev("prepare", 1, 1, f"{N} particles, box {D}, CTF {'yes' if parts.ctf is not None else 'no'}")

    # ---------------------------------------------------------------- 1. ab initio on a subset at the tiny box
    n_sub = min(N, cfg.n_subset)
    sub = torch.randperm(N, generator=gen)[:n_sub].sort().values
    shifts0 = shift_grid(cfg.max_shift_px * d0 / D, max(0.5, cfg.max_shift_px * d0 / D / 2))
    spacing = grid_spacing_deg(cfg.grid_dirs, cfg.grid_psi)
    radii = np.linspace(cfg.radius_global[0], cfg.radius_global[1], cfg.iters_global)
    data = stage_data(parts, d0, radii[0], sub)
    sigma2 = float((data.Y ** 2).mean())
    # the sign of the data's density: centre of a reconstruction from random poses (a round blob)
    blob, _ = _reconstruct(data, random_rotations(n_sub, generator=gen), torch.zeros(n_sub, 2), sigma2, cfg)
    c = d0 // 2
    sign = 1.0 if float(blob[c - 2:c + 3, c - 2:c + 3, c - 2:c + 3].mean()) >= 0 else -1.0
    history["abinit_data_sign"] = sign
    starts = {k: (sign * _random_blobs(d0, data, cfg, gen), sigma2) for k in range(cfg.n_restarts)}
    # successive halving: every `cut` rounds the worse half of the starts (higher residual noise variance) is dropped
    n_cuts = max(0, math.ceil(math.log2(cfg.n_restarts)))
    cut = max(1, cfg.iters_global // (n_cuts + 1))
    total = sum(max(1, cfg.n_restarts >> min(it // cut, n_cuts)) for it in range(cfg.iters_global))
    done = 0
    for it in range(cfg.iters_global):
        data = stage_data(parts, d0, radii[it], sub)
        grid = so3_grid(cfg.grid_dirs, cfg.grid_psi, offset=random_rotations(1, generator=gen)[0])
        for k in list(starts):
            vol, s2_prev = starts[k]
            acc = HartleyAccumulator(d0)
            sc, _, _ = em_search(slicing_volume(vol), data, grid, shifts0, None, acc=acc, batch=cfg.batch)
            s2 = residual_sigma2(sc, data)
            vol, _ = _solve(acc, s2, cfg)
            if cfg.positivity:  # density of the data's sign only (ab initio regulariser)
                vol = sign * torch.clamp(sign * vol, min=0.0)
            starts[k] = (vol, s2)
            done += 1
            yield ev("abinit", done, total, f"round {it + 1}/{cfg.iters_global}, start {k + 1}: radius "
                     f"{radii[it]:.1f} px at box {d0}, noise variance {s2:.4g}",
                     {"start": k, "round": it, "sigma2": s2, "radius": float(radii[it]), "box": d0},
                     volume=vol.cpu().numpy())
        if (it + 1) % cut == 0 and len(starts) > 1 and it + 1 < cfg.iters_global:
            keep = sorted(starts, key=lambda k: starts[k][1])[:max(1, len(starts) // 2)]
            starts = {k: starts[k] for k in keep}
    kbest = min(starts, key=lambda k: starts[k][1])
    vol, best_s2 = starts[kbest]
    history["abinit_best_start"] = kbest
    yield ev("abinit", total, total, f"best start {kbest + 1} (noise variance {best_s2:.4g})", {"sigma2": best_s2},
             volume=vol.cpu().numpy())

    # ---------------------------------------------------------------- 2. all particles: exhaustive projection matching
    # rounds of (exhaustive search over grid x shifts, keep the best n_hypotheses; reconstruct from the best) at
    # box_search, the radius following the spectral SNR: repairs the particles the low-resolution start left wrong.
    r_cur = float(cfg.radius_global[1])
    H = cfg.n_hypotheses
    dg = min(cfg.box_search, D)
    shifts_g = shift_grid(cfg.max_shift_px * dg / D, max(0.5, cfg.max_shift_px * dg / D / 4))
    info = None
    d_prev = d0
    for it in range(cfg.iters_search):
        r_cur = (r_cur * dg / d_prev if info is None else
                 _ssnr_radius(info, d_prev, dg, cfg, floor=min(r_cur * dg / d_prev, cfg.max_radius_frac * dg / 2)))
        data = stage_data(parts, dg, r_cur)
        grid = so3_grid(cfg.grid_dirs, cfg.grid_psi, offset=random_rotations(1, generator=gen)[0])
        sc, ri, ti = global_search(slicing_volume(resize_volume(vol, dg)), data, grid, shifts_g, topk=H,
                                   batch=cfg.batch)
        rot_h = grid[ri]  # (N, H, 3, 3)
        trans_h = shifts_g[ti] * (D / dg)  # input-box px
        sigma2 = residual_sigma2(sc[:, 0], data)
        vol, info = _reconstruct(data, rot_h[:, 0], trans_h[:, 0] * (dg / D), sigma2, cfg)
        d_prev = dg
        yield ev("global", it + 1, cfg.iters_search, f"exhaustive search of {N} particles at box {dg}, radius "
                 f"{r_cur:.1f} px, over {len(grid)} rotations x {len(shifts_g)} shifts", {"sigma2": sigma2,
                 "radius": r_cur, "box": dg}, rot=rot_h[:, 0].numpy(), trans_px=trans_h[:, 0].numpy())
    d0 = d_prev

    # ---------------------------------------------------------------- 3. local refinement, coarse to fine in box
    step = math.radians(spacing) / 2
    tstep = max(cfg.max_shift_px / 2, 1.0)  # input-box px
    rot, trans = rot_h[:, 0], trans_h[:, 0]
    n_local = len(boxes) * cfg.iters_local
    k = 0
    d_prev = d0
    for d in boxes:
        if info is not None:
            r_cur = _ssnr_radius(info, d_prev, d, cfg, floor=r_cur * d / d_prev)
        data = stage_data(parts, d, r_cur)
        for _ in range(cfg.iters_local):
            vol, info = _reconstruct(data, rot, trans * (d / D), sigma2, cfg) if k else (vol, info)
            vh = slicing_volume(resize_volume(vol, d))
            cands = (rot_h, trans_h) if H > 1 else (rot[:, None], trans[:, None])   # all hypotheses in round 1
            H = 1
            r_new, t_new, sigma2 = _local_round(vh, data, *cands, step, tstep, D, cfg)
            dang = _angle_change(rot, r_new)
            rot, trans = r_new, t_new
            k += 1
            yield ev("local", k, n_local, f"box {d} radius {r_cur:.1f} px: step {math.degrees(step):.2f} deg, "
                     f"{tstep:.2f} px; median pose change {np.median(dang):.2f} deg",
                     _local_metrics(d, r_cur, step, sigma2, dang), rot=rot.numpy(), trans_px=trans.numpy())
            step = max(step / 2, math.radians(cfg.min_step_deg))
            tstep = max(tstep / 2, cfg.min_shift_step_px)
        vol, info = _reconstruct(data, rot, trans * (d / D), sigma2, cfg)
        d_prev = d
    # ---------------------------------------------------------------- 3b. exhaustive re-search with the refined map
    # particles caught in a wrong basin (measured on a second 5,000-image set: 25 % with > 15 deg view error at a
    # 1.8 deg median, many flipped by ~180 deg) cannot leave it by local steps; one exhaustive pass at box_research
    # against the refined map offers them its best grid poses, the current pose stays a candidate (nobody gets worse
    # at this box), then one local round per box from box_research up.
    if cfg.box_research:
        dr = min(cfg.box_research, D)
        r_cur = _ssnr_radius(info, d_prev, dr, cfg, floor=min(r_cur * dr / d_prev, cfg.max_radius_frac * dr / 2))
        data = stage_data(parts, dr, r_cur)
        vh = slicing_volume(resize_volume(vol, dr))
        grid = so3_grid(cfg.grid_dirs, cfg.grid_psi, offset=random_rotations(1, generator=gen)[0])
        shifts_r = shift_grid(cfg.max_shift_px * dr / D, max(0.5, cfg.max_shift_px * dr / D / 4))
        _, ri, ti = global_search(vh, data, grid, shifts_r, topk=cfg.research_topk, batch=cfg.batch)
        rot_h = torch.cat([rot[:, None], grid[ri]], 1)
        trans_h = torch.cat([trans[:, None] * (dr / D), shifts_r[ti]], 1)
        step = math.radians(spacing) / 2
        r_new, t_new, sigma2 = _local_round(vh, data, rot_h, trans_h * (D / dr), step, max(cfg.max_shift_px / 2, 1.0),
                                            D, cfg)
        dang = _angle_change(rot, r_new)
        moved = float((dang > 2 * math.degrees(step)).mean())
        rot, trans = r_new, t_new
        history["research_moved_fraction"] = moved
        # reported as part of the refinement stage ("local"), so the stages a progress display shows only advance
        yield ev("local", n_local, n_local, f"exhaustive re-search of {N} particles at box {dr}, "
                 f"radius {r_cur:.1f} px with the refined map: {100 * moved:.1f} % moved to another basin",
                 {"sigma2": sigma2, "radius": r_cur, "box": dr, "moved_fraction": moved},
                 rot=rot.numpy(), trans_px=trans.numpy())
        vol, info = _reconstruct(data, rot, trans * (dr / D), sigma2, cfg)
        d_prev = dr
        step = math.radians(max(cfg.min_step_deg, spacing / 8))
        tstep = max(cfg.min_shift_step_px, 0.25)
        for d in [b for b in boxes if b >= dr]:
            r_cur = _ssnr_radius(info, d_prev, d, cfg, floor=r_cur * d / d_prev)
            data = stage_data(parts, d, r_cur)
            vh = slicing_volume(resize_volume(vol, d))
            r_new, t_new, sigma2 = _local_round(vh, data, rot[:, None], trans[:, None], step, tstep, D, cfg)
            dang = _angle_change(rot, r_new)
            rot, trans = r_new, t_new
            yield ev("local", n_local, n_local, f"box {d} radius {r_cur:.1f} px after the re-search: step "
                     f"{math.degrees(step):.2f} deg; median pose change {np.median(dang):.2f} deg",
                     _local_metrics(d, r_cur, step, sigma2, dang), rot=rot.numpy(), trans_px=trans.numpy())
            vol, info = _reconstruct(data, rot, trans * (d / D), sigma2, cfg)
            d_prev = d
            step = max(step / 2, math.radians(cfg.min_step_deg))
            tstep = max(tstep / 2, cfg.min_shift_step_px)
    history["final_radius_px"] = r_cur
    history["final_refine_box"] = d_prev

    # ---------------------------------------------------------------- 4. heterogeneity with fixed poses
    state = state_score = coords = kind = basis = None
    state_vols = None
    if cfg.n_states != 1:
        dh = min(cfg.box_hetero, D)
        rh = _ssnr_radius(info, d_prev, dh, cfg, floor=cfg.hetero_radius_frac * dh / 2)
        hdata = stage_data(parts, dh, rh)
        het = yield from _heterogeneity(hdata, rot, trans * (dh / D), sigma2, cfg, ev)
        state, state_score, coords, kind, basis = het.labels, het.score, het.coords, het.kind, het.basis
        if basis is not None:
            basis.data_scale = float(parts.scale)
        history["hetero"] = {"kind": kind, "n_states": het.n_states, "components": het.components,
                             "bic": {str(k): v for k, v in het.bic.items()}, "certainty": het.certainty,
                             "box": dh, "radius": rh}

    # ---------------------------------------------------------------- 5. final maps at the input box
    volume, state_vols = _final_maps(parts, rot, trans, vol, state, cfg)
    volume_np = volume.numpy()
    history["density_sign"] = density_sign(volume_np)
    history["wall_s"] = time.time() - t0
    yield ev("done", 1, 1, f"done in {history['wall_s']:.0f} s; density sign {history['density_sign']:+d}; "
             "hand undetermined", {"wall_s": history["wall_s"]}, rot=rot.numpy(), trans_px=trans.numpy(),
             state=None if state is None else np.asarray(state), volume=volume_np)
    return SeedResult(rot.numpy().astype(np.float32), trans.numpy().astype(np.float32), volume_np.astype(np.float32),
                      None if state is None else np.asarray(state, dtype=np.int64), history,
                      None if state_score is None else np.asarray(state_score, dtype=np.float32), state_vols,
                      None if coords is None else np.asarray(coords, dtype=np.float32), kind, basis)


def _local_round(vh, data: StageData, rot_h, trans_h, step: float, tstep: float, D: int, cfg: SeedConfig):
    """One local search round at the stage's box ``data.d``: the best of ``local_perturbations(step)`` (radians)
    around each hypothesis ``rot_h (n, H, 3, 3)`` times shift offsets of +-``tstep`` around ``trans_h (n, H, 2)``
    (both shifts in **input-box** px). Returns ``rot (n, 3, 3)``, ``trans (n, 2)`` input-box px, noise variance."""
    d = data.d
    r_new, t_new, s_new = local_search(vh, data, rot_h, trans_h * (d / D), local_perturbations(step),
                                       shift_grid(tstep * d / D, tstep * d / D), batch=cfg.batch)
    return r_new, t_new * (D / d), residual_sigma2(s_new, data)


def _local_metrics(d: int, radius: float, step: float, sigma2: float, dang: np.ndarray) -> dict:
    return {"box": d, "radius": radius, "step_deg": math.degrees(step), "sigma2": sigma2,
            "median_change_deg": float(np.median(dang))}


def _random_blobs(d: int, data: StageData, cfg: SeedConfig, gen: torch.Generator) -> torch.Tensor:
    """A random positive start: ``cfg.n_blobs`` Gaussian blobs (sigma 1/12..1/6 of the box) inside the mask, scaled so
    its CTF-modulated slices carry about a third of the data power. Positive lumps give the start the right low-
    resolution profile; their random arrangement breaks the symmetry that traps a round start."""
    ax = torch.arange(d, dtype=torch.float32) - d // 2
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    v = torch.zeros(d, d, d)
    for _ in range(cfg.n_blobs):
        c = torch.randn(3, generator=gen)
        c = c / c.norm() * (d / 4) * float(torch.rand(1, generator=gen)) ** (1 / 3)
        sig = d / 12 * (1 + float(torch.rand(1, generator=gen)))
        v += torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * sig * sig))
    m = min(data.n, 200)
    P = slices(slicing_volume(v), data.coords, random_rotations(m, generator=gen))
    scale = (0.3 * float((data.Y ** 2).mean()) / max(float(((data.ctf[:m] * P) ** 2).mean()), 1e-30)) ** 0.5
    return v * scale


def resize_volume(vol: torch.Tensor, d_new: int) -> torch.Tensor:
    """Fourier crop/pad of a seeding volume to box ``d_new`` that keeps its Hartley coefficients (the seeding stages'
    data are crops of one lattice, so volumes at different boxes share coefficients, not mean values)."""
    d = vol.shape[-1]
    if d == d_new:
        return vol
    return fourier_resize(vol, d_new, ndim=3) * (d / d_new) ** 3


def _angle_change(r0: torch.Tensor, r1: torch.Tensor) -> np.ndarray:
    tr = (r0 * r1).sum((-1, -2))
    return np.degrees(np.arccos(np.clip(((tr - 1) / 2).numpy(), -1, 1)))


def density_sign(vol: np.ndarray) -> int:
    """+1 when the map's density is positive (protein on a flat solvent), else -1: the sign of the skewness of the
    voxel values inside the sphere of radius 0.45 box. A particle is a compact excess of density, so its values have
    a long tail on its own side, however small it is in the box; the extreme quantiles of the whole box (the former
    rule) are ringing for a particle filling less than ~1 % of the box, and gave an inverted map for EMD-25892 at
    2 A/px (skewness -13.9 there; -0.8 to -3.7 on the other molecules of the benchmark matrix, all white-particle
    data). Falls back on the extremes when the skewness is ambiguous (|skew| < 0.05)."""
    v = np.asarray(vol, np.float64)
    D = v.shape[0]
    ax = np.arange(D) - D // 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    x = v[(xx ** 2 + yy ** 2 + zz ** 2) <= (0.45 * D) ** 2]
    x = x - x.mean()
    var = float((x ** 2).mean())
    skew = float((x ** 3).mean()) / var ** 1.5 if var > 0 else 0.0
    if abs(skew) >= 0.05:
        return 1 if skew > 0 else -1
    hi, lo = np.quantile(x, [0.995, 0.005])
    return 1 if abs(hi - np.median(x)) >= abs(lo - np.median(x)) else -1


def _heterogeneity(data: StageData, rot, trans, sigma2, cfg: SeedConfig, ev):
    """reconstruct.hetero.analyse about the consensus at the stage's box, its progress as 'hetero' events."""
    hcfg = HeteroConfig(max_components=cfg.hetero_components, max_states=cfg.hetero_max_states,
                        n_states=cfg.n_states, iters_als=cfg.iters_als, als_tol=cfg.als_tol,
                        scale_fit=cfg.hetero_scale_fit, mask_radius_frac=cfg.mask_radius_frac, seed=cfg.seed)
    vol, _ = _reconstruct(data, rot, trans, sigma2, cfg)
    total = 2 * cfg.hetero_components + 2
    g = iter_analyse(data, rot, trans, vol, hcfg)
    k = 0
    while True:
        try:
            msg, metrics = next(g)
        except StopIteration as stop:
            het = stop.value
            break
        k = min(k + 1, total - 1)
        yield ev("hetero", k, total, msg, metrics)
    yield ev("hetero", total, total, f"{het.kind}: {het.n_states} state(s), {het.coords.shape[1]} continuous "
             "coordinate(s)", {"n_states": het.n_states, "n_coords": int(het.coords.shape[1])}, state=het.labels.copy())
    return het


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
