"""Events yielded by `Trainer.run()` (see docs/design.md). Plain dataclasses; arrays are numpy.

Units: `loss` is the mean squared error in normalized Hartley units; `mask_radius` in pixels of the training box;
`elapsed_s` wall-clock seconds since the run (or resume) started; `rot (n,3,3)` cryoDRGN convention
(k_vol = k_img @ rot), `trans (n,2)` in pixels (tx, ty) = (columns, rows), the shift that re-centres the image.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np


@dataclass
class Started:
    config: dict
    n_train: int
    n_val: int


@dataclass
class Step:
    step: int
    images_seen: int
    loss: float
    mask_radius: int
    phase: str            # "pose_only" | "joint"
    elapsed_s: float
    images_total: int


@dataclass
class Latents:
    images_seen: int
    index: np.ndarray     # (n,) int64, particle index in the user's stack
    z: np.ndarray         # (n, d)
    rot: np.ndarray       # (n, 3, 3)
    trans: np.ndarray     # (n, 2) pixels


@dataclass
class Checkpoint:
    path: str
    images_seen: int
    val_loss: float
    pose_change_deg: float | None   # median rotation angle between this and the previous checkpoint (val set)
    z_change: float | None          # median |z_now - z_prev| / median |z_now| on the val set


MessageTopic = Literal["seed_reused", "data_sign", "contrast", "training_box", "batch_size", "data_parallel",
                       "resumed", "stopped", "synthetic_images", "encoder_agreement", "pose_source", "final_maps",
                       "diagnosis"]


@dataclass
class Message:
    """Words for a person; ``topic`` says what they are about, for code and tests that look for a kind of message
    (nothing reads ``text`` but people)."""

    level: str            # "info" | "warning" | "error"
    text: str
    topic: MessageTopic | None = None


SeedStage = Literal["prepare", "abinit", "global", "local", "hetero", "done"]
#: the ab initio seed's stages, in order (reconstruct.seed.SeedEvent.stage)
SEED_STAGES: tuple[str, ...] = get_args(SeedStage)
Phase = Literal["seed", "distill", "pose_only", "joint"]


@dataclass
class PhaseChange:
    """The run enters ``phase`` at ``images_seen`` images (a resumed run announces the phase it resumes in); ``text``
    says so for a person (what the phase does, on how many particles); ``particles``: how many particles the phase
    reads, where it reads fewer than the training split (the seed: its random subset)."""

    phase: Phase
    images_seen: int
    text: str
    particles: int | None = None


@dataclass
class SeedProgress:
    """The ab initio seed entered ``stage`` (one event per stage, in SEED_STAGES order); ``text`` is the stage's
    first report for a person (e.g. the search's box and radius); ``elapsed_s`` since the seed began."""

    stage: SeedStage
    text: str
    elapsed_s: float


@dataclass
class Finished:
    outdir: str
    images_seen: int
    stopped: bool


@dataclass
class Failed:
    message: str


@dataclass
class Verdict:
    """The run's self-diagnosis (cryofire_app.reconstruct.diagnose), emitted once after the outputs are written:
    ``verdict`` is "converged", "uncertain" or "failed"; ``reasons`` say why in words (empty when converged);
    ``checks`` the numbers behind it; ``path`` the report.json that holds them."""

    verdict: Literal["converged", "uncertain", "failed"]
    reasons: list[str]
    checks: dict
    path: str


Event = Started | Step | Latents | Checkpoint | Message | PhaseChange | SeedProgress | Finished | Failed | Verdict


def event_to_json(ev: Any) -> dict:
    """JSON-able summary of an event for log.jsonl (Latents arrays are summarized, not dumped)."""
    out: dict[str, Any] = {"event": type(ev).__name__}
    for f in fields(ev):
        v = getattr(ev, f.name)
        if isinstance(v, np.ndarray):
            if isinstance(ev, Latents):
                out[f.name + "_shape"] = list(v.shape)
                continue
            v = v.tolist()
        elif isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[f.name] = v
    return out
