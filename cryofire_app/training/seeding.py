"""The seeded schedule's first phase: the ab initio seed (reconstruct.iter_seed_abinit) on a bounded subset of the
training particles, or one reused from an earlier run (seed_from), saved as checkpoints/seed.npz.

seed.npz holds, per seeded particle (rows of ``pos``, positions in the particle file): ``rot (n, 3, 3)`` (cryoDRGN
rows), ``trans (n, 2)`` (px of the training box, the shift that re-centres), ``state``, ``state_score``, ``coords``
(the heterogeneity found, possibly empty), and the map ``volume (D, D, D)`` with the data sign applied, the
``density_sign`` of the raw data, ``wall_s`` and the heterogeneity ``kind``.

Data-parallel: rank 0 searches alone and broadcasts the result (or why there is none); the others wait.
"""
from __future__ import annotations

import logging
import math
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Iterator

import numpy as np
import torch

from cryofire_app.io.atomic import atomic_save_npz
from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir
from cryofire_app.training.config import TrainConfig
from cryofire_app.training.events import Failed, Message, SeedProgress, Step
from cryofire_app.training.memory import release_freed_memory
from cryofire_app.training.schedule import mask_radius_at

if TYPE_CHECKING:
    from cryofire_app.training.trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["SEED_KEYS", "basis_z", "load_seed", "read_seed_file", "refine_with_seed", "run_seed", "seed_arrays",
           "seed_subset"]

#: the arrays every seed.npz has
SEED_KEYS = ("pos", "rot", "trans", "state", "state_score", "volume", "density_sign", "wall_s")


def seed_subset(cfg: TrainConfig, train_pos: np.ndarray) -> np.ndarray:
    """The training particles the seed searches: all of them, or a random ``seed_max_particles`` (sorted; a
    function of the split and --seed, so a resumed run finds the same): the seed's cost stays flat in N, and the
    distilled encoder gives the other particles their poses and z."""
    cap = int(cfg.seeded.seed_max_particles)
    if cap <= 0 or len(train_pos) <= cap:
        return train_pos
    rng = np.random.default_rng([cfg.seed, 5])
    return np.sort(rng.choice(train_pos, size=cap, replace=False))


def seed_arrays(N: int, zdim: int, pos, rot, trans, score, coords=None) -> dict:
    """Full-size (``N``) torch lookups of the seed's per-particle results (identity/zero where not seeded). ``z_t``
    (N, q) are the z targets of the distill phase: the seed's continuous heterogeneity coordinates ``coords``
    (q <= zdim of them), or for a seed file without them its 1-D ``score``; each standardised; None when the seed
    found no heterogeneity."""
    R = np.tile(np.eye(3, dtype=np.float32), (N, 1, 1))
    T = np.zeros((N, 2), np.float32)
    has = np.zeros(N, bool)
    R[pos], T[pos], has[pos] = rot, trans, True
    out = {"rot_t": torch.as_tensor(R), "trans_t": torch.as_tensor(T), "has_t": torch.as_tensor(has), "z_t": None}
    c = None
    if coords is not None and coords.ndim == 2 and coords.shape[1] and len(coords) == len(pos):
        c = np.asarray(coords, np.float64)[:, :zdim]
    elif score is not None and len(score) == len(pos):
        c = np.asarray(score, np.float64)[:, None]
    if c is not None and c.shape[1] and np.all(np.isfinite(c)):
        zt = np.zeros((N, c.shape[1]), np.float32)
        zt[pos] = ((c - np.median(c, 0)) / (c.std(0) + 1e-12)).astype(np.float32)
        out["z_t"] = torch.as_tensor(zt)
    return out


def _with_lookups(tr: "Trainer", arrays: dict) -> dict:
    """seed.npz's ``arrays`` plus their full-size lookups (seed_arrays)."""
    score = np.asarray(arrays["state_score"])
    return dict(arrays, **seed_arrays(tr.data.N, tr.config.zdim, arrays["pos"], arrays["rot"], arrays["trans"],
                                      score if score.size else None, arrays.get("coords")))


def load_seed(tr: "Trainer") -> dict:
    """This run's saved seed (a resumed run whose checkpoint says the seed is done)."""
    path = tr.run_dir.seed
    if not path.is_file():
        raise InputError("the checkpoint says the seeding stage is done but its results are missing", path)
    return _with_lookups(tr, read_seed_file(tr, path))


def read_seed_file(tr: "Trainer", path: Path) -> dict:
    """The arrays of a seed.npz (this run's on resume, or an earlier run's with seed_from), checked against this
    run's training split and box (InputError naming the file)."""
    try:
        with np.load(path) as f:
            d = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"not a readable seed file: {exc}", path) from exc
    missing = [k for k in SEED_KEYS if k not in d]
    if missing:
        raise InputError(f"not a cryofire seed file (missing {', '.join(missing)})", path)
    n = len(tr.seed_pos)
    if not np.array_equal(np.asarray(d["pos"], np.int64), tr.seed_pos.astype(np.int64)):
        raise InputError(f"the seed was made on another training split ({len(d['pos'])} particles; this run's "
                         f"split has {n}): reuse a seed only with the same particles, --seed and "
                         "--val-fraction", path)
    if d["rot"].shape != (n, 3, 3) or d["trans"].shape != (n, 2) or d["volume"].shape != (tr.D,) * 3:
        raise InputError(f"seed arrays do not fit this run (rot {d['rot'].shape}, trans {d['trans'].shape}, "
                         f"volume {d['volume'].shape}; expected box {tr.D})", path)
    if not (np.all(np.isfinite(d["rot"])) and np.all(np.isfinite(d["trans"]))):
        raise InputError("the seed's poses contain NaN/Inf", path)
    return d


def run_seed(tr: "Trainer", t0: float) -> Iterator:
    """The seed phase of trainer ``tr``: reuse seed_from, or search; progress as PhaseChange, SeedProgress and
    Step("seed") events (logged by the trainer's emit)."""
    cfg = tr.config
    if cfg.seeded.seed_from:
        path = Path(cfg.seeded.seed_from)
        path = RunDir(path).seed if path.is_dir() else path
        if not path.is_file():
            raise InputError("no seed to reuse here (give a run folder or its checkpoints/seed.npz)", path)
        yield from adopt_seed(tr, read_seed_file(tr, path), source=path)
        return
    arrays = None
    if tr.rank == 0:
        try:
            arrays = yield from search_seed(tr, t0)
        finally:
            arrays = share_seed(tr, arrays)
    else:
        arrays = share_seed(tr, None)
    release_freed_memory()   # the searches' temporaries, before training starts
    if arrays is not None:
        yield from adopt_seed(tr, arrays)


def share_seed(tr: "Trainer", arrays: dict | None) -> dict | None:
    """Under torchrun: rank 0 sends the seed's arrays (None: it failed, or a stop was requested) and every rank
    returns them; a stop on rank 0 becomes a stop on every rank, so all reach the same final barrier."""
    if tr.world == 1:
        return arrays
    arrays, stopped = tr.par.broadcast((arrays, tr.stop_requested))
    if stopped:
        tr.request_stop()
    return arrays


def search_seed(tr: "Trainer", t0: float) -> Generator[Any, None, dict | None]:
    """The pose search itself (rank 0); returns seed.npz's arrays, or None after a Failed event or a stop."""
    from cryofire_app.reconstruct import iter_seed_abinit, seed_config_from

    cfg = tr.config
    try:
        scfg = seed_config_from(cfg.seeded.seed_config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad seed_config {cfg.seeded.seed_config!r}: {exc}") from exc
    n, n_train = len(tr.seed_pos), len(tr.train_pos)
    yield tr.announce("seed", f"seeding: ab initio pose search and state classification on the {n} training "
                              f"particles at box {tr.D}" + ("" if n == n_train else f" (a random {n} of the "
                                                            f"{n_train}: the encoder gives the others their poses)"),
                      particles=None if n == n_train else n)
    ctf = tr.data.ctf.numpy()[tr.seed_pos] if tr.data.ctf is not None else None
    gen = iter_seed_abinit(tr.data.resized_view(tr.seed_pos), ctf, scfg, device=tr.device)
    res = yield from _follow(tr, gen, t0)
    if res is None:
        return None
    if not (np.all(np.isfinite(res.rot)) and np.all(np.isfinite(res.trans_px)) and np.all(np.isfinite(res.volume))):
        yield tr.emit(Failed("the ab initio seed returned non-finite poses or map (NaN/Inf): the particles or their "
                             "CTF parameters hold values the search cannot use; nothing was saved"))
        return None
    return _result_arrays(tr.seed_pos, res)


def _follow(tr: "Trainer", gen, t0: float) -> Generator[Any, None, Any]:
    """Drive the seed's generator, honouring pause and stop; its events as SeedProgress (a new stage) and
    Step("seed") (loss = the noise variance, radius in px of the training box). Returns its result, or None after
    a stop or a Failed event."""
    stage, k, loss, radius = None, 0, float("nan"), 0
    while True:
        tr.wait_if_paused()
        if tr.stop_requested:
            gen.close()
            return None
        try:
            e = next(gen)
        except StopIteration as stop:
            return stop.value
        except (ValueError, FloatingPointError, RuntimeError) as exc:   # e.g. NaN from degenerate data
            log.exception("the ab initio seed failed")
            yield tr.emit(Failed(f"the ab initio seed failed in its '{stage or 'prepare'}' stage: {exc}. No training "
                                 "checkpoint was written; check the particles (NaN/Inf pixels, blank images, wrong "
                                 "CTF) or give more particles"))
            return None
        if e.stage != stage:
            stage = e.stage
            yield tr.emit(SeedProgress(e.stage, e.message, e.elapsed_s))
        m = e.metrics
        if "sigma2" in m:
            loss = float(m["sigma2"])
        if "radius" in m:
            radius = int(round(float(m["radius"]) * tr.D / max(int(m.get("box", tr.D)), 1)))
        k += 1
        if math.isfinite(loss):
            yield tr.emit(Step(k, 0, loss, radius, "seed", time.time() - t0, tr.images_total))


def _result_arrays(pos: np.ndarray, res) -> dict:
    """seed.npz's arrays of the seed's result ``res`` on the particles ``pos``."""
    sgn = int(res.history.get("density_sign", 1))
    n = len(pos)
    score = res.state_score if res.state_score is not None else np.zeros(0, np.float32)
    state = res.state if res.state is not None else np.zeros(0, np.int64)
    coords = res.coords if res.coords is not None else np.zeros((n, 0), np.float32)
    basis = res.basis.to_arrays() if getattr(res, "basis", None) is not None else {}
    h = res.history
    if all(k in h for k in ("final_refine_box", "final_radius_px", "data_scale")):   # for reconstruct.refine
        basis.update(refine_box=np.int64(h["final_refine_box"]), refine_radius=np.float64(h["final_radius_px"]),
                     data_scale=np.float64(h["data_scale"]))
    return dict(**basis, pos=pos.astype(np.int64), rot=res.rot.astype(np.float32),
                trans=res.trans_px.astype(np.float32), state=state.astype(np.int64),
                state_score=score.astype(np.float32), volume=(sgn * res.volume).astype(np.float32),
                density_sign=np.int64(sgn),
                wall_s=np.float64(res.history.get("wall_s", float("nan"))), coords=coords.astype(np.float32),
                kind=np.str_(res.hetero_kind or ""))


def adopt_seed(tr: "Trainer", arrays: dict, source: Path | None = None) -> Iterator:
    """Make ``arrays`` (seed.npz fields; ``source``: the earlier run's file they were reused from, None when
    searched now) the run's seed: save them, set the data sign, checkpoint."""
    reused = source is not None
    if reused:
        yield tr.emit(Message("info", f"seed reused from {source} (no pose search)", "seed_reused"))
    if tr.rank == 0:
        atomic_save_npz(tr.run_dir.seed, **arrays)
    tr.seed = _with_lookups(tr, arrays)
    msg = _adopt_sign(tr, int(arrays["density_sign"]))
    if msg is not None:
        yield tr.emit(msg)
    tr.state.seed_done = True
    state, kind = np.asarray(arrays["state"]), str(arrays.get("kind", ""))
    sizes = "" if not state.size else f"; state sizes {np.bincount(state).tolist()}"
    if kind:
        sizes += f" ({kind} heterogeneity, {np.asarray(arrays['coords']).shape[-1]} continuous coordinate(s))"
    made = f"seed {'(reused) made' if reused else 'done'} in {float(arrays['wall_s']):.0f} s{sizes}"
    yield tr.announce("distill", f"{made}; distilling into the encoder for {tr.distill_images} images at radius "
                                 f"{mask_radius_at(tr.config, tr.D, 0)} px")
    if tr.rank == 0:
        tr.save_checkpoint(numbered=False)
    tr.par.barrier()


def _adopt_sign(tr: "Trainer", sgn: int) -> Message | None:
    """The seed's map has the sign ``sgn`` on the raw data; the trainer models sign * data = C * V with V > 0."""
    cfg = tr.config
    if cfg.invert_data == "auto":
        tr.state.sign = float(sgn)
        tr.state.contrast_checked = True
        return Message("info", f"data sign from the seed's map: {'inverting' if sgn < 0 else 'keeping'} the data "
                               "(particles " + ("white" if sgn < 0 else "black") + ")", "data_sign")
    if tr.sign != sgn:
        return Message("warning", f"--invert-data {cfg.invert_data} disagrees with the seed's map (density sign "
                                  f"{sgn:+d} on the raw data): the map will come out negative", "data_sign")
    return None


def basis_z(seed: dict, zdim: int, images, n: int, ctf_params: np.ndarray | None, rot: np.ndarray,
            trans_px: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(z, state)`` of ``n`` particles at poses ``rot``, ``trans_px`` (px of the training box) from the seed's
    heterogeneity basis (seed.npz's ``basis_*``, reconstruct.coordinates): ``z (n, q)``, z_0..z_{q-1}, the seed's own
    estimate of its coordinates, standardised as the distill phase's z targets (seed_arrays), so the decoder reads
    them as it learnt them; ``state (n,)`` their labels under the seed's state mixture (None for one state, or a
    file without it). ``images(rows)``: the particles' raw images at the training box. None when the seed found no
    reproducible direction (or the file predates the basis)."""
    from cryofire_app.reconstruct.coordinates import particle_coordinates
    from cryofire_app.reconstruct.hetero import HeteroBasis

    basis = HeteroBasis.from_arrays(seed)
    coords = np.asarray(seed.get("coords", np.zeros((0, 0))), np.float64)
    if basis is None or basis.q == 0 or zdim <= 0 or coords.ndim != 2 or coords.shape[1] == 0:
        return None
    q = min(basis.q, zdim, coords.shape[1])
    x = particle_coordinates(images, n, ctf_params, rot, trans_px, basis)
    c = coords[:, :q]
    z = ((x[:, :q].astype(np.float64) - np.median(c, 0)) / (c.std(0) + 1e-12)).astype(np.float32)
    return z, basis.states(x)


def refine_with_seed(seed: dict, images, n: int, ctf_params: np.ndarray | None, rot: np.ndarray,
                     trans_px: np.ndarray, seed_config: dict | None = None,
                     search: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rot, trans_px)`` of ``n`` particles refined against the seed's map (reconstruct.refine: the seed's own last
    refinement, at its box and radius), from the given poses (px of the training box) and, with ``search``, from the
    best poses of an exhaustive search as the seed's (its box, grid and shift range, from ``seed_config``: the run's
    TrainConfig.seeded.seed_config overrides); ``images(rows)``: raw images at the training box. None when seed.npz
    predates the refinement keys."""
    from cryofire_app.reconstruct import seed_config_from
    from cryofire_app.reconstruct.refine import refine_poses

    if any(k not in seed for k in ("refine_box", "refine_radius", "data_scale", "volume", "density_sign")):
        return None
    raw_sign_map = float(seed["density_sign"]) * np.asarray(seed["volume"], np.float32)   # the map of the raw data
    sc = seed_config_from(seed_config)
    starts = dict(box=sc.box_search, grid_dirs=sc.grid_dirs, grid_psi=sc.grid_psi, max_shift_px=sc.max_shift_px,
                  topk=sc.research_topk) if search else None
    return refine_poses(images, n, ctf_params, rot, trans_px, raw_sign_map, float(seed["data_scale"]),
                        int(seed["refine_box"]), float(seed["refine_radius"]), search=starts)
