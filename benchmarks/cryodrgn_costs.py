"""Pure helpers of cryodrgn_compare.py: cryoDRGN and cryofire log parsing, full-schedule projections."""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class AbinitDefaults:
    """cryoDRGN 4.3.1 `abinit` schedule defaults (commands/abinit.py): epoch 0 pretrains on min(N, n_imgs_pretrain)
    images, epochs 1..epochs_pose_search run the hierarchical pose search on all N, the rest SGD on all N."""

    num_epochs: int = 30
    epochs_pose_search: int = 3
    n_imgs_pretrain: int = 10_000


VAE_DEFAULT_EPOCHS = 20  # cryoDRGN 4.3.1 train_vae -n default


def project_abinit(n: int, t_pretrain: float, t_hps: float, t_sgd: float,
                   d: AbinitDefaults = AbinitDefaults(), o_pretrain: float = 0.0,
                   o_sgd: float = 0.0) -> dict[str, float]:
    """Seconds of cryoDRGN's default `abinit` schedule on n images from per-image costs (s/image) of its phases
    and fixed per-epoch overheads o_* (s: data-loader start-up, first batch)."""
    pre = o_pretrain + min(n, d.n_imgs_pretrain) * t_pretrain
    hps = d.epochs_pose_search * n * t_hps
    sgd = (d.num_epochs - d.epochs_pose_search) * (o_sgd + n * t_sgd)
    return {"pretrain_s": pre, "pose_search_s": hps, "sgd_s": sgd, "total_s": pre + hps + sgd}


def n_train_split(n: int, val_fraction: float = 0.05, val_max: int = 256) -> int:
    """Training-split size of `cryofire train` (validation: val_fraction of the particles, at most val_max)."""
    return n - min(val_max, int(round(n * val_fraction)))


def project_seeded(n: int, seed_s: float, t_distill: float, t_joint: float, final_pass_s: float,
                   passes: float = 20.0, distill_fraction: float = 0.6) -> dict[str, float]:
    """Seconds of cryofire's default seeded schedule on n particles (passes over the training split)."""
    total_images = passes * n_train_split(n)
    distill = distill_fraction * total_images * t_distill
    joint = (1 - distill_fraction) * total_images * t_joint
    return {"seed_s": seed_s, "distill_s": distill, "joint_s": joint, "final_pass_s": final_pass_s,
            "images_total": total_images, "total_s": seed_s + distill + joint + final_pass_s}


_EPOCH_RE = re.compile(r"=====> (?:(?P<kind>[\w ]+?) )?Epoch: (?P<epoch>\d+)\b.*?[Ff]inished in "
                       r"(?:(?P<days>\d+) days?, )?(?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")


def parse_epoch_times(log_text: str) -> dict[int, float]:
    """Epoch -> seconds from cryoDRGN `abinit` ("# =====> Pretrain Epoch: 0 finished in 0:00:16.2; ...") and
    `train_vae` ("# =====> Epoch: 1 Average gen loss = ...; Finished in 0:01:02.5") log lines."""
    out: dict[int, float] = {}
    for m in _EPOCH_RE.finditer(log_text):
        days = int(m["days"] or 0)
        out[int(m["epoch"])] = days * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])
    return out


_BATCH_RE = re.compile(r"\((?P<ts>\d{2}-\w{3}-\d{4} \d{2}:\d{2}:\d{2})\) # \[Train Epoch: (?P<epoch>\d+)/\d+\] "
                       r"\[(?P<count>\d+)/\d+ particles\]")


def steady_rates(log_text: str) -> dict[int, dict[str, float]]:
    """Steady per-image cost of each cryoDRGN `abinit` epoch from its in-epoch progress lines
    ("(24-Nov-2026 07:28:33) # [Train Epoch: 0/2] [64/384 particles]", written every --log-interval images):
    seconds per image between the first and the last line of the epoch (so the first batch, which includes the
    data-loader start-up, is left out). Timestamps have 1 s resolution; needs two lines at least."""
    pts: dict[int, list[tuple[float, int]]] = {}
    for m in _BATCH_RE.finditer(log_text):
        t = dt.datetime.strptime(m["ts"], "%d-%b-%Y %H:%M:%S").timestamp()
        pts.setdefault(int(m["epoch"]), []).append((t, int(m["count"])))
    out = {}
    for ep, pp in pts.items():
        if len(pp) >= 2 and pp[-1][1] > pp[0][1]:
            out[ep] = {"s_per_image": (pp[-1][0] - pp[0][0]) / (pp[-1][1] - pp[0][1]),
                       "images_timed": float(pp[-1][1] - pp[0][1]), "first_count": float(pp[0][1])}
    return out


def phase_rates(steps: list[dict]) -> dict[str, dict[str, float]]:
    """Per-phase cost from `cryofire train` Step events (log.jsonl dicts with phase, images_seen, elapsed_s):
    seconds per image between the first and the last Step of each image-consuming phase; "seed" gives its span."""
    by: dict[str, list[dict]] = {}
    for s in steps:
        by.setdefault(s["phase"], []).append(s)
    out: dict[str, dict[str, float]] = {}
    prev_end = 0.0
    for phase, ss in by.items():
        start, end = ss[0], ss[-1]
        if phase == "seed":
            out[phase] = {"seconds": end["elapsed_s"]}
        else:
            # the phase's first step is timed from the previous phase's last event
            imgs = end["images_seen"] - start["images_seen"]
            secs = end["elapsed_s"] - start["elapsed_s"]
            out[phase] = {"images": float(imgs), "seconds": secs, "s_per_image": secs / imgs if imgs > 0 else math.nan,
                          "first_elapsed_s": start["elapsed_s"], "prev_end_s": prev_end}
        prev_end = end["elapsed_s"]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b
