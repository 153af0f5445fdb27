"""The ab initio seed's stages (reconstruct.seed.iter_seed_abinit drives them in order) and their building blocks.

Each stage is a generator over one :class:`SeedRun`, the state the stages hand on: it yields the stage's
:class:`~.seed.SeedEvent` s (through ``run.ev``) and updates the run's consensus ``vol`` (at the stage's box), its
reconstruction ``info`` (spectral SNR), the poses ``rot (N, 3, 3)`` and ``trans (N, 2)`` (input-box px), the noise
variance, the frequency radius ``r_cur`` (Fourier px of the box ``d_prev`` it was set at) and the search steps. The
random stream ``run.gen`` is drawn from in stage order, so a seed's result is a function of its config and data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from ..physics.rotations import random_rotations
from .data import Particles, StageData, stage_data
from .final import particle_maps
from .grids import grid_spacing_deg, local_perturbations, shift_grid, so3_grid
from .hetero import HeteroConfig, iter_analyse
from .search import backproject, em_search, global_search, local_search, residual_sigma2, slices
from .volume import HartleyAccumulator, resize_volume, slicing_volume

if TYPE_CHECKING:
    from .seed import SeedConfig

__all__ = ["SeedRun", "abinit_stage", "density_sign", "final_stage", "global_stage", "hetero_stage", "local_stage",
           "research_stage", "resize_volume"]


@dataclass
class SeedRun:
    """The seed's state between stages (module docstring); ``ev(stage, step, total, message, metrics, **arrays)``
    makes (and records) an event."""

    cfg: SeedConfig
    parts: Particles
    gen: torch.Generator
    ev: Callable[..., Any]
    history: dict
    vol: torch.Tensor | None = None
    info: dict | None = None
    sigma2: float = 0.0
    rot: torch.Tensor | None = None
    trans: torch.Tensor | None = None
    rot_h: torch.Tensor | None = None     # (N, H, 3, 3) hypotheses of the exhaustive search
    trans_h: torch.Tensor | None = None   # (N, H, 2) input-box px
    r_cur: float = 0.0
    d_prev: int = 0
    spacing: float = 0.0                  # the search grid's spacing (degrees)
    n_local: int = 0                      # local rounds before the re-search (its events count as their last)
    hetero: Any = None                    # reconstruct.hetero.HeteroResult, or None without the step
    volume: torch.Tensor | None = None    # the final consensus at the input box
    state_vols: np.ndarray | None = None
    boxes: list = field(default_factory=list)   # the local refinement's boxes, coarse to fine

    @property
    def N(self) -> int:
        return self.parts.n

    @property
    def D(self) -> int:
        return self.parts.D


def abinit_stage(run: SeedRun) -> Iterator:
    """1. Ab initio on a subset at the tiny box ``box_global``: ``n_restarts`` random-blob starts refined by EM over
    the radii ``radius_global``, the worse half dropped every few rounds (successive halving); the best start's map
    becomes ``run.vol``."""
    cfg, parts, gen, D = run.cfg, run.parts, run.gen, run.D
    d0 = min(cfg.box_global, D)
    n_sub = min(run.N, cfg.n_subset)
    sub = torch.randperm(run.N, generator=gen)[:n_sub].sort().values
    shifts0 = shift_grid(cfg.max_shift_px * d0 / D, max(0.5, cfg.max_shift_px * d0 / D / 2))
    run.spacing = grid_spacing_deg(cfg.grid_dirs, cfg.grid_psi)
    radii = np.linspace(cfg.radius_global[0], cfg.radius_global[1], cfg.iters_global)
    data = stage_data(parts, d0, radii[0], sub)
    sigma2 = float((data.Y ** 2).mean())
    # the sign of the data's density: centre of a reconstruction from random poses (a round blob)
    blob, _ = _reconstruct(data, random_rotations(n_sub, generator=gen), torch.zeros(n_sub, 2), sigma2, cfg)
    c = d0 // 2
    sign = 1.0 if float(blob[c - 2:c + 3, c - 2:c + 3, c - 2:c + 3].mean()) >= 0 else -1.0
    run.history["abinit_data_sign"] = sign
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
            vol, s2 = _abinit_round(starts[k][0], data, grid, shifts0, sign, cfg)
            starts[k] = (vol, s2)
            done += 1
            yield run.ev("abinit", done, total, f"round {it + 1}/{cfg.iters_global}, start {k + 1}: radius "
                         f"{radii[it]:.1f} px at box {d0}, noise variance {s2:.4g}",
                         {"start": k, "round": it, "sigma2": s2, "radius": float(radii[it]), "box": d0},
                         volume=vol.cpu().numpy())
        if (it + 1) % cut == 0 and len(starts) > 1 and it + 1 < cfg.iters_global:
            keep = sorted(starts, key=lambda k: starts[k][1])[:max(1, len(starts) // 2)]
            starts = {k: starts[k] for k in keep}
    kbest = min(starts, key=lambda k: starts[k][1])
    run.vol, best_s2 = starts[kbest]
    run.history["abinit_best_start"] = kbest
    run.d_prev = d0
    yield run.ev("abinit", total, total, f"best start {kbest + 1} (noise variance {best_s2:.4g})",
                 {"sigma2": best_s2}, volume=run.vol.cpu().numpy())


def _abinit_round(vol: torch.Tensor, data: StageData, grid, shifts, sign: float, cfg: SeedConfig):
    """One EM round of a start: (its new map, the residual noise variance)."""
    acc = HartleyAccumulator(data.d)
    sc, _, _ = em_search(slicing_volume(vol), data, grid, shifts, None, acc=acc, batch=cfg.batch)
    s2 = residual_sigma2(sc, data)
    vol, _ = _solve(acc, s2, cfg)
    if cfg.positivity:  # density of the data's sign only (ab initio regulariser)
        vol = sign * torch.clamp(sign * vol, min=0.0)
    return vol, s2


def global_stage(run: SeedRun) -> Iterator:
    """2. All particles: rounds of exhaustive projection matching at ``box_search`` (the best ``n_hypotheses`` poses
    kept), reconstructing from the best, the radius following the spectral SNR: repairs the particles the
    low-resolution start left wrong."""
    cfg, parts, D = run.cfg, run.parts, run.D
    run.r_cur = float(cfg.radius_global[1])
    dg = min(cfg.box_search, D)
    shifts_g = shift_grid(cfg.max_shift_px * dg / D, max(0.5, cfg.max_shift_px * dg / D / 4))
    for it in range(cfg.iters_search):
        run.r_cur = (run.r_cur * dg / run.d_prev if run.info is None else
                     _ssnr_radius(run.info, run.d_prev, dg, cfg,
                                  floor=min(run.r_cur * dg / run.d_prev, cfg.max_radius_frac * dg / 2)))
        data = stage_data(parts, dg, run.r_cur)
        grid = so3_grid(cfg.grid_dirs, cfg.grid_psi, offset=random_rotations(1, generator=run.gen)[0])
        sc, ri, ti = global_search(slicing_volume(resize_volume(run.vol, dg)), data, grid, shifts_g,
                                   topk=cfg.n_hypotheses, batch=cfg.batch)
        run.rot_h = grid[ri]  # (N, H, 3, 3)
        run.trans_h = shifts_g[ti] * (D / dg)  # input-box px
        run.sigma2 = residual_sigma2(sc[:, 0], data)
        run.vol, run.info = _reconstruct(data, run.rot_h[:, 0], run.trans_h[:, 0] * (dg / D), run.sigma2, cfg)
        run.d_prev = dg
        yield run.ev("global", it + 1, cfg.iters_search, f"exhaustive search of {run.N} particles at box {dg}, "
                     f"radius {run.r_cur:.1f} px, over {len(grid)} rotations x {len(shifts_g)} shifts",
                     {"sigma2": run.sigma2, "radius": run.r_cur, "box": dg}, rot=run.rot_h[:, 0].numpy(),
                     trans_px=run.trans_h[:, 0].numpy())


def local_stage(run: SeedRun) -> Iterator:
    """3. Local refinement, coarse to fine in box (``boxes_local``), the step halving each round; the first round
    starts from every hypothesis of the exhaustive search."""
    cfg, parts, D = run.cfg, run.parts, run.D
    step = math.radians(run.spacing) / 2
    tstep = max(cfg.max_shift_px / 2, 1.0)  # input-box px
    run.rot, run.trans = run.rot_h[:, 0], run.trans_h[:, 0]
    run.n_local = len(run.boxes) * cfg.iters_local
    H, k = cfg.n_hypotheses, 0
    for d in run.boxes:
        if run.info is not None:
            run.r_cur = _ssnr_radius(run.info, run.d_prev, d, cfg, floor=run.r_cur * d / run.d_prev)
        data = stage_data(parts, d, run.r_cur)
        for _ in range(cfg.iters_local):
            if k:
                run.vol, run.info = _reconstruct(data, run.rot, run.trans * (d / D), run.sigma2, cfg)
            vh = slicing_volume(resize_volume(run.vol, d))
            cands = (run.rot_h, run.trans_h) if H > 1 else (run.rot[:, None], run.trans[:, None])   # round 1: all
            H = 1
            r_new, t_new, run.sigma2 = _local_round(vh, data, *cands, step, tstep, D, cfg)
            dang = _angle_change(run.rot, r_new)
            run.rot, run.trans = r_new, t_new
            k += 1
            yield run.ev("local", k, run.n_local, f"box {d} radius {run.r_cur:.1f} px: step "
                         f"{math.degrees(step):.2f} deg, {tstep:.2f} px; median pose change {np.median(dang):.2f} deg",
                         _local_metrics(d, run.r_cur, step, run.sigma2, dang), rot=run.rot.numpy(),
                         trans_px=run.trans.numpy())
            step = max(step / 2, math.radians(cfg.min_step_deg))
            tstep = max(tstep / 2, cfg.min_shift_step_px)
        run.vol, run.info = _reconstruct(data, run.rot, run.trans * (d / D), run.sigma2, cfg)
        run.d_prev = d


def research_stage(run: SeedRun) -> Iterator:
    """3b. One exhaustive re-search at ``box_research`` against the refined map (the current pose stays a candidate,
    so nobody gets worse at this box), then one local round per box from there up: particles caught in a wrong basin
    (often flipped by ~180 deg) cannot leave it by local steps."""
    cfg, parts, D = run.cfg, run.parts, run.D
    if not cfg.box_research:
        return
    dr = min(cfg.box_research, D)
    run.r_cur = _ssnr_radius(run.info, run.d_prev, dr, cfg,
                             floor=min(run.r_cur * dr / run.d_prev, cfg.max_radius_frac * dr / 2))
    data = stage_data(parts, dr, run.r_cur)
    vh = slicing_volume(resize_volume(run.vol, dr))
    grid = so3_grid(cfg.grid_dirs, cfg.grid_psi, offset=random_rotations(1, generator=run.gen)[0])
    shifts_r = shift_grid(cfg.max_shift_px * dr / D, max(0.5, cfg.max_shift_px * dr / D / 4))
    _, ri, ti = global_search(vh, data, grid, shifts_r, topk=cfg.research_topk, batch=cfg.batch)
    rot_h = torch.cat([run.rot[:, None], grid[ri]], 1)
    trans_h = torch.cat([run.trans[:, None] * (dr / D), shifts_r[ti]], 1)
    step = math.radians(run.spacing) / 2
    r_new, t_new, run.sigma2 = _local_round(vh, data, rot_h, trans_h * (D / dr), step,
                                            max(cfg.max_shift_px / 2, 1.0), D, cfg)
    dang = _angle_change(run.rot, r_new)
    moved = float((dang > 2 * math.degrees(step)).mean())
    run.rot, run.trans = r_new, t_new
    run.history["research_moved_fraction"] = moved
    # reported as part of the refinement stage ("local"), so the stages a progress display shows only advance
    yield run.ev("local", run.n_local, run.n_local, f"exhaustive re-search of {run.N} particles at box {dr}, "
                 f"radius {run.r_cur:.1f} px with the refined map: {100 * moved:.1f} % moved to another basin",
                 {"sigma2": run.sigma2, "radius": run.r_cur, "box": dr, "moved_fraction": moved},
                 rot=run.rot.numpy(), trans_px=run.trans.numpy())
    run.vol, run.info = _reconstruct(data, run.rot, run.trans * (dr / D), run.sigma2, cfg)
    run.d_prev = dr
    yield from _refine_after_research(run, dr)


def _refine_after_research(run: SeedRun, dr: int) -> Iterator:
    """One local round per box from ``dr`` up, the step from an eighth of the grid spacing down."""
    cfg, parts, D = run.cfg, run.parts, run.D
    step = math.radians(max(cfg.min_step_deg, run.spacing / 8))
    tstep = max(cfg.min_shift_step_px, 0.25)
    for d in [b for b in run.boxes if b >= dr]:
        run.r_cur = _ssnr_radius(run.info, run.d_prev, d, cfg, floor=run.r_cur * d / run.d_prev)
        data = stage_data(parts, d, run.r_cur)
        vh = slicing_volume(resize_volume(run.vol, d))
        r_new, t_new, run.sigma2 = _local_round(vh, data, run.rot[:, None], run.trans[:, None], step, tstep, D, cfg)
        dang = _angle_change(run.rot, r_new)
        run.rot, run.trans = r_new, t_new
        yield run.ev("local", run.n_local, run.n_local, f"box {d} radius {run.r_cur:.1f} px after the re-search: "
                     f"step {math.degrees(step):.2f} deg; median pose change {np.median(dang):.2f} deg",
                     _local_metrics(d, run.r_cur, step, run.sigma2, dang), rot=run.rot.numpy(),
                     trans_px=run.trans.numpy())
        run.vol, run.info = _reconstruct(data, run.rot, run.trans * (d / D), run.sigma2, cfg)
        run.d_prev = d
        step = max(step / 2, math.radians(cfg.min_step_deg))
        tstep = max(tstep / 2, cfg.min_shift_step_px)


def hetero_stage(run: SeedRun) -> Iterator:
    """4. Heterogeneity with the poses fixed, at ``box_hetero`` (reconstruct.hetero); skipped for n_states = 1."""
    cfg, D = run.cfg, run.D
    if cfg.n_states == 1:
        return
    dh = min(cfg.box_hetero, D)
    rh = _ssnr_radius(run.info, run.d_prev, dh, cfg, floor=cfg.hetero_radius_frac * dh / 2)
    hdata = stage_data(run.parts, dh, rh)
    het = yield from _heterogeneity(hdata, run.rot, run.trans * (dh / D), run.sigma2, cfg, run.ev)
    if het.basis is not None:
        het.basis.data_scale = float(run.parts.scale)
    run.hetero = het
    run.history["hetero"] = {"kind": het.kind, "n_states": het.n_states, "components": het.components,
                             "bic": {str(k): v for k, v in het.bic.items()}, "certainty": het.certainty,
                             "box": dh, "radius": rh}


def final_stage(run: SeedRun) -> None:
    """5. The consensus (and per-state) maps at the input box's full Nyquist."""
    state = run.hetero.labels if run.hetero is not None else None
    run.volume, run.state_vols = _final_maps(run.parts, run.rot, run.trans, run.vol, state, run.cfg)


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
    """The consensus map and (K >= 2 states) one map per state at the input box's full Nyquist
    (:func:`.final.particle_maps`), with the noise variance of the current map ``vol`` at the final poses."""
    vol_d = slicing_volume(resize_volume(vol, parts.D))
    return particle_maps(parts, rot, trans, vol_d, state, cfg.mask_radius_frac * parts.D / 2, chunk)


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
