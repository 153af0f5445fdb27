"""A run's final outputs (rank 0): an eval-mode pass over every particle writes pose.pkl, z.pkl (cryoDRGN formats;
translations as fractions of the training box) and latents.npz; seeded runs also write the seed's poses and states;
then the explicit reconstruction and the self-diagnosis (training/report.py) write reconstruction/ and report.json.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from cryofire_app.io.atomic import atomic_save_npz
from cryofire_app.model.cryofire import mask_points
from cryofire_app.training.events import Message
from cryofire_app.training.inference import Predictions, default_turns
from cryofire_app.training.memory import release_freed_memory
from cryofire_app.training.schedule import mask_radius_at

if TYPE_CHECKING:
    from cryofire_app.training.trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["diagnose_events", "outputs_message", "refine_others", "seed_fits_better", "write_outputs"]


@torch.no_grad()
def seed_fits_better(tr: "Trainer", pos: np.ndarray, pr: Predictions, radius: int) -> np.ndarray:
    """(len(pos),) bool: the decoder's error (mask radius ``radius``, the z of ``pr``) is lower at the seed's pose
    than at the predicted one. ``pr`` holds predictions for every particle (row = position)."""
    mp = mask_points(tr.lattice, radius, tr.device)
    out = np.zeros(len(pos), bool)
    tr.model.eval()
    bs = tr.config.eval_batch_size
    for i in range(0, len(pos), bs):
        b = tr.data.load(pos[i:i + bs])
        Y = b.Y.to(tr.device) * tr.sign
        ctf = b.ctf.to(tr.device) if b.ctf is not None else None
        z = torch.as_tensor(pr.z[b.pos], device=tr.device)
        errs = []
        for R, t in ((tr.seed["rot_t"][b.pos], tr.seed["trans_t"][b.pos]),
                     (torch.as_tensor(pr.rot[b.pos]), torch.as_tensor(pr.trans[b.pos]))):
            errs.append(tr.model.branch_errors(Y, ctf, {"rot": R.to(tr.device), "trans": t.to(tr.device)}, z, mp,
                                               sym=False)[0])
        out[i:i + len(b.pos)] = (errs[0] <= errs[1]).cpu().numpy()
    tr.model.train()
    return out


def seed_basis_z(tr: "Trainer", pr: Predictions) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(z (N, q), state (N,) or None)`` of every particle from the seed's heterogeneity basis at the final poses
    ``pr`` (training.seeding.basis_z), or None when the seed has none."""
    from cryofire_app.training.seeding import basis_z

    ctf = tr.data.ctf.numpy() if tr.data.ctf is not None else None
    return basis_z(tr.seed, tr.config.zdim, tr.data.resized_images, tr.data.N, ctf, pr.rot, pr.trans)


def refine_others(tr: "Trainer", pr: Predictions) -> None:
    """Refine, in place, the poses of ``pr`` (every particle) of the particles the seed did not search against the
    seed's map (``config.seeded.refine_others``: search | local | no; training.seeding.refine_with_seed, as `cryofire
    infer --refine-poses`); records ``tr.others_refined = (n, mode, seconds)``."""
    import time

    from cryofire_app.training.seeding import refine_with_seed

    mode = tr.config.seeded.refine_others
    rest = np.setdiff1d(np.arange(tr.data.N), tr.seed["pos"])
    tr.others_refined = (len(rest), "no", 0.0)
    if mode == "no" or not len(rest):
        return
    t0 = time.perf_counter()
    ctf = tr.data.ctf.numpy()[rest] if tr.data.ctf is not None else None
    out = refine_with_seed(tr.seed, lambda rows: tr.data.resized_images(rest[rows]), len(rest), ctf, pr.rot[rest],
                           pr.trans[rest], tr.config.seeded.seed_config, search=mode == "search")
    if out is not None:
        pr.rot[rest], pr.trans[rest] = out
        tr.others_refined = (len(rest), mode, time.perf_counter() - t0)


def write_outputs(tr: "Trainer") -> tuple[Predictions, tuple[np.ndarray, np.ndarray]]:
    """The final pass over every particle; returns the final predictions (``rot``, ``trans`` in training-box px,
    ``z``, ``branch`` for every particle) and the poses the self-diagnosis judges ``(rot, trans)``: the same but
    the encoder's own for the particles the seed did not search (its held-out check is of the encoder). Particles
    the seed saw keep whichever pose the decoder fits better at its whole training radius: the seed's (exhaustive
    search and local refinement) or the encoder's (no labels needed; the encoder can drift from, or never reach,
    the seed); the others get the encoder's pose refined against the seed's map (:func:`refine_others`: decision
    016). When the seed found reproducible heterogeneity, z_0..z_{q-1} are every particle's coordinates on the
    seed's residual directions at its final pose (the estimate the seed made for its own particles, which
    generalises as the poses do), and latents.npz's ``state`` their states under the seed's mixture; the encoder's
    own z is kept in latents.npz as ``z_encoder``."""
    from cryofire_app.io import write_pose_pkl, write_z_pkl

    cfg, rd = tr.config, tr.run_dir
    release_freed_memory()   # training's temporaries, before the passes over every particle
    r = min(cfg.select_radius, mask_radius_at(cfg, tr.D, tr.images_seen))
    pr = tr.predict(np.arange(tr.data.N), r, default_turns(cfg))   # as `cryofire infer` would
    if tr.seed is not None:
        p = tr.seed["pos"]
        use = seed_fits_better(tr, p, pr, mask_radius_at(cfg, tr.D, tr.images_seen))
        q = p[use]
        pr.rot[q] = tr.seed["rot"][use]
        pr.trans[q] = tr.seed["trans"][use]
        pr.branch[q] = 0
        tr.seed_pose_fraction = float(use.mean()) if len(use) else 0.0
    judged = (pr.rot.copy(), pr.trans.copy())
    if tr.seed is not None:
        refine_others(tr, pr)
    z_encoder = pr.z.copy()
    zb = seed_basis_z(tr, pr) if tr.seed is not None else None
    extra = {}
    if zb is not None:
        pr.z[:, : zb[0].shape[1]] = zb[0]
        if zb[1] is not None:   # every particle's state under the seed's mixture
            extra["state"] = zb[1].astype(np.int64)
    write_pose_pkl(rd.pose, pr.rot.astype(np.float32), (pr.trans / tr.D).astype(np.float32))
    write_z_pkl(rd.z, pr.z.astype(np.float32))
    split = np.zeros(tr.data.N, np.int8)
    split[tr.val_pos] = 1
    atomic_save_npz(rd.latents, index=np.asarray(tr.data.particles.index, np.int64), z=pr.z.astype(np.float32),
                    rot=pr.rot.astype(np.float32), trans=pr.trans.astype(np.float32),
                    branch=pr.branch.astype(np.int8), val=split, images_seen=np.int64(tr.images_seen),
                    D=np.int64(tr.D), apix=np.float64(tr.data.apix), z_encoder=z_encoder.astype(np.float32), **extra)
    if tr.seed is not None:
        _write_seed_outputs(tr)
    return pr, judged


def _write_seed_outputs(tr: "Trainer") -> None:
    """The seed's own per-particle poses (seed_pose.pkl, rows of seed_ind.pkl) and its heterogeneity
    (seed_states.npz: state 0 = the largest, state_score, coords and kind when it found any)."""
    from cryofire_app.io import write_ind_pkl, write_pose_pkl

    sd, rd = tr.seed, tr.run_dir
    write_pose_pkl(rd.seed_pose, sd["rot"].astype(np.float32), (sd["trans"] / tr.D).astype(np.float32))
    write_ind_pkl(rd.seed_ind, sd["pos"].astype(np.int64))
    if not np.asarray(sd["state"]).size:
        return
    extra = {}
    coords = np.asarray(sd.get("coords", np.zeros((0, 0))), np.float32)
    if coords.ndim == 2 and coords.shape[1] and len(coords) == len(sd["pos"]):
        extra["coords"] = coords
    if str(sd.get("kind", "")):
        extra["kind"] = np.str_(str(sd["kind"]))
    score = np.asarray(sd["state_score"], np.float32)
    if score.size != len(sd["pos"]):   # no heterogeneity found: no score, one state
        score = np.zeros(len(sd["pos"]), np.float32)
    atomic_save_npz(rd.seed_states, index=sd["pos"].astype(np.int64), state=np.asarray(sd["state"], np.int64),
                    state_score=score, **extra)


def outputs_message(tr: "Trainer") -> Message:
    """Seeded runs: how many seeded particles kept the seed's pose, how the others' poses were refined, and a
    warning when the encoder never reached the seed (its own poses are then not reliable)."""
    gap = f"{tr.agreement_deg:.1f} deg" if tr.agreement_deg is not None else "not checked"
    n, mode, sec = tr.others_refined
    msg = (f"outputs: the seed's pose fits the decoder better for {100 * tr.seed_pose_fraction:.0f} % of the "
           f"{len(tr.seed['pos'])} training particles (kept there; the encoder's elsewhere)")
    if n:
        msg += (f"; the other {n} particles' encoder poses were refined against the seed's map ({mode}, "
                f"{sec:.0f} s)" if mode != "no" else f"; the other {n} particles keep the encoder's poses")
    if not tr.joint_ok:
        return Message("warning", msg + f"; the encoder stayed {gap} from the seed's poses, so its own poses are not "
                                        "reliable yet (`cryofire infer --refine-poses no`): train longer, or on a "
                                        "GPU", "pose_source")
    return Message("info", msg, "pose_source")


def diagnose_events(tr: "Trainer", pr: Predictions, judged: tuple[np.ndarray, np.ndarray]) -> Iterator:
    """The final explicit reconstruction at the final poses ``pr`` and the self-diagnosis (training.report) of the
    poses ``judged`` (:func:`write_outputs`): maps in reconstruction/, a Verdict event and report.json; a fault in
    either is a warning and never fails the run."""
    from cryofire_app.training.report import diagnose_run, final_reconstruction

    rec = None
    release_freed_memory()   # the passes' temporaries, before the full-box accumulators
    try:
        rec = final_reconstruction(tr, pr.rot, pr.trans)
        yield Message("info", f"final reconstruction of {rec['n_particles']} particles at box {tr.D}: half-map FSC "
                              f"0.143 at {rec['res_0.143_A']:.1f} A, 0.5 at {rec['res_0.5_A']:.1f} A "
                              f"({rec['folder']})", "final_maps")
    except (RuntimeError, ValueError, OSError) as exc:
        log.exception("final reconstruction failed")
        yield Message("warning", f"the final explicit reconstruction could not run ({exc})", "final_maps")
    try:
        yield diagnose_run(tr, *judged, rec)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
        log.exception("self-diagnosis failed")
        yield Message("warning", f"self-diagnosis could not run ({exc}); report.json not written", "diagnosis")
