"""The run's self-diagnosis after training: cross-validated checks of the final poses (and states) on the data alone
(cryofire_app.reconstruct.diagnose), the verdict, and ``report.json`` in the run folder.

report.json: ``{"verdict": "converged" | "uncertain" | "failed", "reasons": [...], "checks": {...}, "run": {...}}``;
``checks`` holds the numbers behind the verdict (median cross-validated pose gain of the training particles and of
the held-out split, pose agreement with the other half's map, half-map FSC resolutions, state AUC, the encoder's
agreement with the seed).
"""
from __future__ import annotations

import json
import math

import numpy as np

from cryofire_app.io.rundir import RunDir
from cryofire_app.training.checkpoint import atomic_write_text
from cryofire_app.training.events import Verdict


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _seed_states(trainer, pos: np.ndarray) -> np.ndarray | None:
    """The seed's state label of each particle of ``pos`` (-1 where the seed did not see it), or None."""
    seed = trainer.seed
    if seed is None or not np.asarray(seed["state"]).size:
        return None
    lookup = np.full(trainer.data.N, -1, np.int64)
    lookup[seed["pos"]] = np.asarray(seed["state"], np.int64)
    return lookup[pos]


def final_reconstruction(trainer, rot: np.ndarray, trans_px: np.ndarray) -> dict:
    """The explicit map of the training particles at their final poses (reconstruct.final): writes
    ``OUTDIR/reconstruction/{map,half_1,half_2}.mrc`` (and ``state_K.mrc`` for the seed's states; positive density,
    the run's hand and pixel size) and ``fsc.png``; returns what report.json records of it."""
    from cryofire_app.analysis.plots import plot_fsc
    from cryofire_app.io import write_mrc
    from cryofire_app.reconstruct.final import chunk_size, final_maps

    data, pos = trainer.data, np.asarray(trainer.train_pos)
    st = _seed_states(trainer, pos)
    st = st if st is not None and np.all(st >= 0) and st.max() >= 1 else None   # K >= 2 states only
    ctf = data.ctf.numpy()[pos] if data.ctf is not None else None
    fm = final_maps(lambda rows: data.resized_images(pos[rows]), len(pos), ctf, rot[pos],
                    trans_px[pos], state=st, seed=trainer.config.seed, chunk=chunk_size(data.D))
    folder = RunDir(trainer.outdir).reconstruction
    folder.mkdir(parents=True, exist_ok=True)
    apix, sign = float(data.apix), float(trainer.sign)
    files = {"map": fm.volume, "half_1": fm.half1, "half_2": fm.half2}
    for k, v in enumerate(fm.state_volumes if fm.state_volumes is not None else []):
        files[f"state_{k}"] = v
    for name, vol in files.items():
        write_mrc(folder / f"{name}.mrc", sign * vol, apix=apix)
    plot_fsc({"half maps": (fm.freq, fm.fsc)}, folder / "fsc.png", apix=apix)
    return {"folder": str(folder), "files": sorted(f"{n}.mrc" for n in files) + ["fsc.png"],
            "n_particles": fm.n_particles, "res_0.143_px": fm.res_0143_px, "res_0.5_px": fm.res_05_px,
            "res_0.143_A": fm.res_0143_px * apix, "res_0.5_A": fm.res_05_px * apix,
            "fsc_freq_cyc_per_px": fm.freq.tolist(), "fsc": fm.fsc.tolist(),
            "note": "half maps of random halves at the jointly found poses: gold-standard in form only"}


def diagnose_run(trainer, rot: np.ndarray, trans_px: np.ndarray, reconstruction: dict | None = None) -> Verdict:
    """Diagnose ``trainer``'s final poses ``rot (N, 3, 3)``, ``trans_px (N, 2)`` (all particles, training box px):
    the validation split's images (never fitted) decide, against the training particles' map; the training split's
    are checked between halves. Writes report.json (with ``reconstruction``, :func:`final_reconstruction`'s
    record, when given); returns the :class:`Verdict` event."""
    from cryofire_app.reconstruct.diagnose import DiagnoseConfig, diagnose, verdict

    cfg = trainer.config
    dcfg = DiagnoseConfig(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train = np.sort(rng.permutation(trainer.train_pos)[:dcfg.max_particles])
    val = np.sort(rng.permutation(trainer.val_pos)[:dcfg.n_score])
    pos = np.concatenate([train, val])
    heldout = np.r_[np.zeros(len(train), bool), np.ones(len(val), bool)]
    state = None
    st = _seed_states(trainer, pos)
    if st is not None and np.all(st[~heldout] >= 0):
        state = np.where(st >= 0, st, 0)
    ctf = trainer.data.ctf.numpy()[pos] if trainer.data.ctf is not None else None
    diag = diagnose(trainer.data.resized_view(pos), ctf, rot[pos], trans_px[pos], state=state,
                    apix=trainer.data.apix, heldout=heldout, config=dcfg)
    agree = target = None
    if cfg.schedule == "seeded" and trainer.seed is not None:
        agree, target = trainer.agreement_deg, cfg.seeded.seed_agreement_deg
    level, reasons = verdict(diag, encoder_agreement_deg=agree, encoder_target_deg=target)
    checks = diag.to_dict()
    checks["encoder_agreement_deg"] = agree
    checks["encoder_agreement_target_deg"] = target
    path = RunDir(trainer.outdir).report
    doc = {"verdict": level, "reasons": reasons, "checks": checks,
           "run": {"images_seen": int(trainer.images_seen), "box": int(trainer.D), "apix": trainer.data.apix,
                   "schedule": cfg.schedule, "n_train": int(len(trainer.train_pos)),
                   "n_val": int(len(trainer.val_pos))}}
    if reconstruction is not None:
        doc["reconstruction"] = reconstruction
        checks["reconstruction"] = {k: reconstruction[k] for k in ("folder", "res_0.143_A", "res_0.5_A")}
    atomic_write_text(path, json.dumps(_finite(doc), indent=1))
    return Verdict(level, reasons, _finite(checks), str(path))


def summary_line(ev: Verdict) -> str:
    """One line for a console: the verdict, its key numbers and reasons, and where the report is."""
    c = ev.checks
    nums = []
    if c.get("signal_ratio") is not None:
        nums.append(f"held-out pose signal {c['signal_ratio']:.2f}x noise")
    if c.get("heldout_gain_median") is not None:
        nums.append(f"encoder pose gain {c['heldout_gain_median']:.2f}")
    if c.get("state_auc") is not None:
        nums.append(f"state AUC {c['state_auc']:.2f}")
    head = {"converged": "reconstruction converged", "uncertain": "reconstruction UNCERTAIN",
            "failed": "reconstruction FAILED"}[ev.verdict]
    why = "" if not ev.reasons else ": " + "; ".join(ev.reasons)
    return f"{head} ({', '.join(nums)}){why} [{ev.path}]"
