"""`RunDir`: the layout of a run folder (what `cryofire train` writes; `cryofire infer` writes the prediction files
of the same names), and its event log.

Every path of a run is named here once; readers and writers take them from a `RunDir`. `read_events` is the one
reader of `log.jsonl` (one JSON object per line, key "event" = the event's class name; a half-written last line of a
running or killed job is skipped).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The files of the run folder ``root``."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # what the trainer writes
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def numbered_checkpoint(self, images_seen: int) -> Path:
        return self.checkpoints / f"ckpt_{int(images_seen):010d}.pt"

    def numbered_checkpoints(self) -> list[Path]:
        """The numbered checkpoints present, oldest (fewest images) first."""
        return sorted(self.checkpoints.glob("ckpt_*.pt"))

    @property
    def seed(self) -> Path:
        return self.checkpoints / "seed.npz"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def reconstruction(self) -> Path:
        return self.root / "reconstruction"

    # per-particle outputs (also the files of a `cryofire infer` folder)
    @property
    def pose(self) -> Path:
        return self.root / "pose.pkl"

    @property
    def z(self) -> Path:
        return self.root / "z.pkl"

    @property
    def latents(self) -> Path:
        return self.root / "latents.npz"

    @property
    def seed_pose(self) -> Path:
        return self.root / "seed_pose.pkl"

    @property
    def seed_ind(self) -> Path:
        return self.root / "seed_ind.pkl"

    @property
    def seed_states(self) -> Path:
        return self.root / "seed_states.npz"

    def is_run(self) -> bool:
        """Whether ``root`` holds a training run (its config.json)."""
        return self.config.is_file()

    def events(self) -> list[dict]:
        """The events of log.jsonl (empty when there is none yet)."""
        return read_events(self.log) if self.log.is_file() else []


def read_events(path: str | Path) -> list[dict]:
    """The JSON objects of an event log, one per line; lines that are not whole JSON objects are skipped."""
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out
