"""The ab initio seed's state labels of a seeded run (``seed_states.npz``), read and checked.

A run trained with the seeded schedule writes ``seed_states.npz`` beside ``seed_pose.pkl``: arrays ``index`` (int,
(M,): **positions** of the classified particles in the run's particle stack, i.e. rows of the run's per-particle
arrays ``Run.z/rot/trans/index``, not the user's original particle indices), ``state`` (int, (M,), 0 = the larger
state) and ``state_score`` (float, (M,), the seed's log posterior odds of state 1; larger = state 1). Only the
training split is classified: held-out (validation) particles have no seed label. On issue 5's benchmark set these
labels separate two states better than PC1 of the encoder's z, so ``cryofire analyze``, the demo and the Latent dock
use them as the state split when they exist, and keep z for the continuous heterogeneity.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError

SEED_STATES_FILE = "seed_states.npz"
UNLABELLED = -1   # label of a run row the seed did not classify (held-out particles)


@dataclass
class SeedStates:
    """rows: (M,) int64 rows of the run's per-particle arrays; state: (M,) int64 in 0..K-1 (0 = larger state);
    score: (M,) float32 log posterior odds of state 1; path: the file they came from."""

    rows: np.ndarray
    state: np.ndarray
    score: np.ndarray
    path: Path

    @property
    def n_states(self) -> int:
        return int(self.state.max()) + 1

    def counts(self) -> np.ndarray:
        """(K,) particles per state."""
        return np.bincount(self.state, minlength=self.n_states)

    def rows_of(self, k: int) -> np.ndarray:
        """Run rows labelled state ``k`` (in file order)."""
        return self.rows[self.state == k]

    def labels_for_rows(self, n: int) -> np.ndarray:
        """(n,) int64 state of every run row, :data:`UNLABELLED` (-1) for rows the seed did not classify."""
        if len(self.rows) and int(self.rows.max()) >= n:
            raise InputError(f"labels particle row {int(self.rows.max())} but the run has {n} particles", self.path)
        out = np.full(n, UNLABELLED, np.int64)
        out[self.rows] = self.state
        return out


def read_seed_states(path: str | Path, n_particles: int | None = None) -> SeedStates:
    """Read and check a ``seed_states.npz``; ``n_particles`` (the run's particle count) bounds its row indices.

    Raises InputError naming the file for anything malformed: not an .npz, a missing array, arrays of different
    lengths or not 1-D, no particles, non-integer or out-of-range or repeated rows, labels that are not 0..K-1 with
    every state present, non-finite scores.
    """
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            raise InputError("not an npz archive (numpy.savez) of seed state labels", path)
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("index", "state", "state_score") if k not in f.files]
            if missing:
                raise InputError(f"not a seed state file: array(s) {', '.join(missing)} missing "
                                 f"(has {', '.join(f.files) or 'none'})", path)
            rows, state, score = f["index"], f["state"], f["state_score"]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"unreadable seed state file ({type(exc).__name__}: {exc})", path) from None
    for name, arr in (("index", rows), ("state", state), ("state_score", score)):
        if arr.ndim != 1:
            raise InputError(f"{name} must be one-dimensional, got shape {arr.shape}", path)
    if not len(rows) == len(state) == len(score):
        raise InputError(f"index, state and state_score differ in length ({len(rows)}, {len(state)}, {len(score)})",
                         path)
    if len(rows) == 0:
        raise InputError("no particles in the seed state file", path)
    for name, arr in (("index", rows), ("state", state)):
        if arr.dtype.kind not in "iu":
            raise InputError(f"{name} must hold integers, got dtype {arr.dtype}", path)
    if score.dtype.kind != "f" or not np.all(np.isfinite(score)):
        raise InputError("state_score must be finite floating-point numbers", path)
    rows, state = rows.astype(np.int64), state.astype(np.int64)
    if rows.min() < 0 or (n_particles is not None and rows.max() >= n_particles):
        bound = f" of a run with {n_particles} particles" if n_particles is not None else ""
        raise InputError(f"particle rows run from {int(rows.min())} to {int(rows.max())}, outside the rows{bound}",
                         path)
    if len(np.unique(rows)) != len(rows):
        raise InputError("a particle row is listed more than once", path)
    if state.min() < 0 or np.any(np.bincount(state) == 0):
        raise InputError(f"state labels must be 0..K-1 with every state present, got {np.unique(state).tolist()}",
                         path)
    return SeedStates(rows=rows, state=state, score=score.astype(np.float32), path=path)
