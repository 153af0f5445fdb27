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
from pathlib import Path

import numpy as np

from cryofire_app.training.checkpoint import atomic_write_text
from cryofire_app.training.events import Verdict

REPORT_NAME = "report.json"


def _images(data, pos: np.ndarray) -> np.ndarray:
    """Raw images at the training box (Fourier crop of the stack, no window, raw sign) of particles ``pos``."""
    return np.concatenate([data.prep.resized(data.read(pos[i:i + 512])).numpy() for i in range(0, len(pos), 512)])


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def diagnose_run(trainer, rot: np.ndarray, trans_px: np.ndarray) -> Verdict:
    """Diagnose ``trainer``'s final poses ``rot (N, 3, 3)``, ``trans_px (N, 2)`` (all particles, training box px):
    the training split's poses are checked by cross-validation between halves, the validation split's (predicted by
    the encoder) against the training particles' map. Writes report.json; returns the :class:`Verdict` event."""
    from cryofire_app.reconstruct.diagnose import DiagnoseConfig, diagnose, verdict

    cfg = trainer.config
    dcfg = DiagnoseConfig(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train = np.sort(rng.permutation(trainer.train_pos)[:dcfg.max_particles])
    val = np.sort(rng.permutation(trainer.val_pos)[:dcfg.n_score])
    pos = np.concatenate([train, val])
    heldout = np.r_[np.zeros(len(train), bool), np.ones(len(val), bool)]
    state = None
    seed = trainer.seed
    if seed is not None and np.asarray(seed["state"]).size:
        lookup = np.full(trainer.data.N, -1, np.int64)
        lookup[seed["pos"]] = np.asarray(seed["state"], np.int64)
        st = lookup[pos]
        if np.all(st[~heldout] >= 0):
            state = np.where(st >= 0, st, 0)
    ctf = trainer.data.ctf.numpy()[pos] if trainer.data.ctf is not None else None
    diag = diagnose(_images(trainer.data, pos), ctf, rot[pos], trans_px[pos], state=state,
                    apix=trainer.data.apix, heldout=heldout, config=dcfg)
    agree = target = None
    if cfg.schedule == "seeded" and trainer.seed is not None:
        agree, target = trainer.agreement_deg, cfg.seed_agreement_deg
    level, reasons = verdict(diag, encoder_agreement_deg=agree, encoder_target_deg=target)
    checks = diag.to_dict()
    checks["encoder_agreement_deg"] = agree
    checks["encoder_agreement_target_deg"] = target
    path = Path(trainer.outdir) / REPORT_NAME
    doc = {"verdict": level, "reasons": reasons, "checks": checks,
           "run": {"images_seen": int(trainer.images_seen), "box": int(trainer.D), "apix": trainer.data.apix,
                   "schedule": cfg.schedule, "n_train": int(len(trainer.train_pos)),
                   "n_val": int(len(trainer.val_pos))}}
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
