"""The engine calls the GUI makes, in one place (no engine logic here: each function forwards to the engine).

Everything in this module may run on a worker thread: no Qt.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from cryofire_app.io.rundir import RunDir  # noqa: F401  (the run folder layout, for the docks)

#: engine names the docks use as they are, each imported on first use (``from cryofire_app.gui.engine_api import
#: Trainer``): importing the engine takes seconds, and the docks must open at once
EXPORTS = {
    "InputError": "cryofire_app.io.errors",
    "read_mrc": "cryofire_app.io",
    "write_mrc": "cryofire_app.io",
    "atomic_write_text": "cryofire_app.io.atomic",
    "demo_config": "cryofire_app.simulate",
    "simulate": "cryofire_app.simulate",
    "SCHEDULES": "cryofire_app.training.config",
    "TrainConfig": "cryofire_app.training.config",
    **{name: "cryofire_app.training.events" for name in ("Started", "Step", "Latents", "Checkpoint", "Message",
                                                         "PhaseChange", "SeedProgress", "Verdict", "Finished",
                                                         "Failed")},
    "Trainer": "cryofire_app.training.trainer",
    "Run": "cryofire_app.analysis.run",
}


def __getattr__(name: str) -> Any:
    """The engine's ``name`` (one of EXPORTS), imported now."""
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def preload_training() -> None:
    """Import the trainer and the run reader now (the Train dock does it on the GUI thread while idle, rather than
    first in its worker, where a multi-second import competes with the GUI thread for the GIL)."""
    importlib.import_module("cryofire_app.training.trainer")
    importlib.import_module("cryofire_app.analysis.run")


def preload_analysis() -> None:
    """Import the latent-space analysis and plots now (the Latent dock's worker threads use them)."""
    importlib.import_module("cryofire_app.analysis.latent")
    importlib.import_module("cryofire_app.analysis.plots")


def latent_pca(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PC scores (n, k) of z and the explained-variance ratio (k,), via `cryofire_app.analysis.latent.fit_pca`."""
    from cryofire_app.analysis.latent import fit_pca

    p = fit_pca(z)
    return np.asarray(p.scores, np.float32), p.explained_variance_ratio


def latent_kmeans(z: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means labels of z (largest cluster is 0), via `cryofire_app.analysis.latent.kmeans`."""
    from cryofire_app.analysis.latent import kmeans

    return kmeans(z, k, seed=seed).labels


def pc_trajectory(z: np.ndarray, pc: int, n: int, span: float) -> np.ndarray:
    """z (n, zdim) at n evenly spaced points from -span to +span standard deviations along PC `pc` (1-based)."""
    from cryofire_app.analysis.latent import fit_pca

    _, zs = fit_pca(z).points_along(pc, n=n, lo=-span, hi=span, units="std")
    return zs


def view_angles(rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation (degrees) of the viewing directions rot[:, 2]."""
    from cryofire_app.analysis.plots import viewing_directions

    return viewing_directions(rot)


def export_selection(prefix: Path, index: np.ndarray, rot: np.ndarray | None = None, trans: np.ndarray | None = None,
                     run: Any = None, labels: np.ndarray | None = None) -> list[Path]:
    """RELION .star + cryoSPARC .cs subset (or index .csv) + cryoDRGN ind.pkl of the particles with original
    indices `index`, via `cryofire_app.analysis.selection.export_selection` (trans in pixels of the run's box)."""
    from cryofire_app.analysis.selection import export_selection as _export

    return _export(prefix, index, rot=rot, trans=trans, run=run, labels=labels)


def open_run_for(outdir: Any) -> Any:
    """The engine's Run for a folder, or None when it has no config.json yet."""
    from cryofire_app.analysis.run import Run

    if outdir is None or not RunDir(outdir).is_run():
        return None
    return Run(outdir)


def mirror_volumes(vols: np.ndarray) -> np.ndarray:
    """Volumes (..., D, D, D) in the other hand, via `cryofire_app.analysis.hand.mirror_volume` (z -> -z about the
    centre voxel, the convention of analysis.metrics.FLIP)."""
    from cryofire_app.analysis.hand import mirror_volume

    return mirror_volume(vols)


def mirror_rotations(rot: np.ndarray) -> np.ndarray:
    """Poses (n, 3, 3) that go with `mirror_volumes` (F R F), via `cryofire_app.analysis.hand.mirror_rotations`."""
    from cryofire_app.analysis.hand import mirror_rotations as _mirror

    return _mirror(rot)
