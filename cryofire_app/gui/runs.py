"""Run folders seen from the GUI: open one on a worker thread, and decode volumes from its latest checkpoint.

All functions here may run on worker threads (no Qt). The engine's `cryofire_app.analysis.Run` does the work.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryofire_app.gui.engine_api import RunDir
from cryofire_app.gui.session import DecoderSource, LatentSet


def _run_class():
    from cryofire_app.gui.engine_api import Run

    return Run


class RunDecoder:
    """Decodes z with the run's newest checkpoint; reloads the Run when checkpoints/last.pt changes on disk.

    Used during training (a new checkpoint arrives every few thousand images) and for finished runs.
    Calls are serialised by a lock, so it is safe from any worker thread.
    """

    def __init__(self, outdir: str | Path, run: Any = None):
        self.outdir = Path(outdir)
        self._run = run
        self._stamp = self._checkpoint_stamp() if run is not None else None
        self._lock = threading.Lock()

    def _checkpoint_stamp(self):
        p = RunDir(self.outdir).last_checkpoint
        try:
            st = os.stat(p)
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def run(self):
        stamp = self._checkpoint_stamp()
        if self._run is None or stamp != self._stamp:
            self._run = _run_class()(self.outdir)
            self._stamp = stamp
        return self._run

    def __call__(self, z: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self.run().decode(np.asarray(z, np.float32)), np.float32)


def decoder_source(run: Any, decoder: RunDecoder | None = None) -> DecoderSource:
    dec = decoder or RunDecoder(run.outdir, run)
    return DecoderSource(decode=dec, apix=float(run.apix or 1.0), D=int(run.D), outdir=str(run.outdir),
                         label=Path(run.outdir).name)


@dataclass
class OpenedRun:
    run: Any
    latents: LatentSet | None
    decoder: DecoderSource
    message: str


def open_run(outdir: str | Path) -> OpenedRun:
    """Worker-thread job: open a finished or running output folder.

    A finished run has latents.npz (every particle, final eval pass); a running one may have only a checkpoint, in
    which case latents are None (the plot fills from training snapshots or after the run ends).
    """
    from cryofire_app.gui.engine_api import InputError

    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError("run folder not found", outdir)
    run = _run_class()(outdir)
    latents = None
    try:
        z = run.z
    except (InputError, FileNotFoundError, OSError):
        z = None
    note = ""
    if z is not None:
        seed_state = None
        try:   # a seeded run's ab initio state labels (seed_states.npz), per row of the latents
            seeds = run.seed_states
            if seeds is not None:
                seed_state = seeds.labels_for_rows(len(z))
                note = f"; seed states {seeds.counts().tolist()}"
        except InputError as exc:  # the run is still worth opening: say why the states are missing
            note = f"; seed states ignored ({exc})"
        latents = LatentSet(index=run.index, z=z, rot=getattr(run, "rot", None), trans=getattr(run, "trans", None),
                            final=True, seed_state=seed_state)
    dec = decoder_source(run)
    n = 0 if latents is None else len(latents.z)
    msg = (f"{outdir.name}: {n:,} particles, box {run.D}, {run.apix:.3g} Å/px{note}" if latents is not None else
           f"{outdir.name}: checkpoint only (no latents.npz yet), box {run.D}")
    return OpenedRun(run=run, latents=latents, decoder=dec, message=msg)
