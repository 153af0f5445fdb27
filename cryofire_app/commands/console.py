"""The one console wording of training events, shared by `cryofire train` and `cryofire demo` (each adds its own
progress display and prefix)."""
from __future__ import annotations

from typing import Any


def event_line(ev: Any) -> str | None:
    """The line a person reads for a training event, or None for events shown otherwise (steps, latents, start and
    end, which each command reports in its own way)."""
    from cryofire_app.training.events import Checkpoint, Message, PhaseChange, SeedProgress, Verdict
    from cryofire_app.training.report import summary_line

    if isinstance(ev, Message):
        return f"{ev.level}: {ev.text}"
    if isinstance(ev, PhaseChange):
        return f"info: {ev.text}"
    if isinstance(ev, SeedProgress):
        return f"info: seed {ev.stage}: {ev.text}"
    if isinstance(ev, Checkpoint):
        dp = "" if ev.pose_change_deg is None else f", pose change {ev.pose_change_deg:.2f} deg"
        dz = "" if ev.z_change is None else f", z change {ev.z_change:.3f}"
        return f"checkpoint at {ev.images_seen} images: val loss {ev.val_loss:.5g}{dp}{dz}"
    if isinstance(ev, Verdict):
        return ("" if ev.verdict == "converged" else "WARNING: ") + summary_line(ev)
    return None
