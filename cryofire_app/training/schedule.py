"""The schedule of a run, as pure functions of the image count (never of steps or epochs, so it does not depend on the
batch size): which phase is running, the learning rate, the frequency-mask radius (px of the training box) and the
grid head's distill target width (view spacings).

Phases: "amortized" (the paper's schedule) runs "pose_only" (one consensus map, z bypassed) for pose_only_images,
then "joint"; "seeded" runs the ab initio "seed", then "distill" (the encoder learns the seed's poses) for
distill_fraction of the images and until the encoder agrees with the seed, then "joint".
"""
from __future__ import annotations

import math

from cryofire_app.io.errors import InputError
from cryofire_app.training.config import SCHEDULES, TrainConfig

__all__ = ["PHASE_NAMES", "SCHEDULES", "distill_images", "distill_lr_factor", "grid_width_at", "lr_at",
           "mask_radius_at", "phase_at"]

#: the phases' names in PhaseChange texts
PHASE_NAMES = {"seed": "ab initio seed", "distill": "distilling the seed into the encoder",
               "pose_only": "pose-only training (one consensus map)", "joint": "joint training of poses and z"}


def phase_at(cfg: TrainConfig, images_seen: int, images_total: int, seed_done: bool, joint_ok: bool) -> str:
    """The phase of a run at ``images_seen``: amortized "pose_only" then "joint"; seeded "seed" (until the seed is
    done), "distill" (for distill_images and until ``joint_ok``: the encoder reproduces the seed), then "joint"."""
    if cfg.schedule == "seeded":
        if not seed_done:
            return "seed"
        return "distill" if images_seen < distill_images(cfg, images_total) or not joint_ok else "joint"
    return "pose_only" if images_seen < cfg.amortized.pose_only_images else "joint"


def distill_images(cfg: TrainConfig, images_total: int) -> int:
    """Images of the seeded schedule's distill phase (at least; it lasts until the encoder agrees with the seed)."""
    return int(round(cfg.seeded.distill_fraction * images_total))


def mask_radius_at(cfg: TrainConfig, D: int, images_seen: int) -> int:
    """Frequency-mask radius (px): marching for "amortized"; fixed at freq_max (or D//2) for "seeded"."""
    rmax = D // 2 if cfg.freq_max is None else min(cfg.freq_max, D // 2)
    if cfg.schedule == "seeded":
        return int(rmax)
    return int(min(cfg.amortized.freq_start + images_seen // max(cfg.amortized.freq_add_every, 1), rmax))


def lr_at(cfg: TrainConfig, images_seen: int, images_total: int) -> float:
    """Learning rate for the step that starts at `images_seen` (see TrainConfig.lr_schedule)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule != "cosine":
        raise InputError(f"unknown lr_schedule {cfg.lr_schedule!r} (constant or cosine)")
    frac = min(images_seen / max(images_total, 1), 1.0)
    warm = 0.05
    if frac < warm:
        return cfg.lr * (1 / 25 + (1 - 1 / 25) * frac / warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))


def distill_lr_factor(cfg: TrainConfig, images_seen: int, distill_images: int) -> float:
    """Factor on the distill phase's learning rate at `images_seen`: 1 until the fraction distill_decay_from of the
    distill images, then a cosine down to seeded_joint_lr_scale (the joint phase's factor) at their end, held after."""
    a = cfg.seeded.distill_decay_from * distill_images
    if images_seen <= a or distill_images <= a:
        return 1.0
    frac = min((images_seen - a) / (distill_images - a), 1.0)
    lo = cfg.seeded.joint_lr_scale
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))


def grid_width_at(cfg: TrainConfig, images_seen: int, distill_images: int) -> float:
    """Width of the grid head's distill target (view spacings) at `images_seen`: 1, narrowing linearly to
    cfg.seeded.distill_grid_width between the fractions distill_narrow_from and distill_narrow_to of the distill
    images."""
    a, b = cfg.seeded.distill_narrow_from * distill_images, cfg.seeded.distill_narrow_to * distill_images
    frac = 1.0 if images_seen >= b else (0.0 if images_seen <= a else (images_seen - a) / (b - a))
    return 1.0 + (cfg.seeded.distill_grid_width - 1.0) * frac
