"""The ab initio seed's heterogeneity of a seeded run (``seed_states.npz``): states, coordinates, read and checked.

A run trained with the seeded schedule writes ``seed_states.npz`` beside ``seed_pose.pkl``. Arrays (M particles):

- ``index`` int (M,): **positions** of the classified particles in the run's particle stack, i.e. rows of the run's
  per-particle arrays ``Run.z/rot/trans/index``, not the user's original particle indices;
- ``state`` int (M,): the seed's discrete state, 0..K-1, 0 = the largest; K >= 1 (K = 1: no separated states);
- ``state_score`` float (M,): for K = 2 the seed's log posterior odds of state 1 (larger = state 1), otherwise the
  first heterogeneity coordinate;
- ``coords`` float (M, q), optional: the seed's continuous heterogeneity coordinates (standardised, the
  first the strongest), q >= 1; absent (or q = 0) when the seed found no heterogeneity;
- ``kind`` 0-d string, optional: ``"discrete"`` (K >= 2 separated states), ``"continuous"`` (K = 1, q >= 1
  coordinates) or ``"homogeneous"`` (K = 1, no coordinates). Files without it (older runs: K = 2, no coords)
  read as ``"discrete"`` when K >= 2, else ``"continuous"`` with coords, ``"homogeneous"`` without.

The file classifies the particles the seed searched. Every other particle (the held-out split; past the seed's
subset, the rest) gets its state from latents.npz's ``state``: the seed's mixture at its final pose, which the run
writes for every particle (:attr:`SeedStates.others`); runs without it leave those unlabelled. On issue
5's benchmark set the labels separate two states better than PC1 of the encoder's z, so ``cryofire analyze``, the
demo and the Latent dock use them as the state split when K >= 2, and the coordinates as the continuous landscape
when the seed found no discrete states.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError
from cryofire_app.reconstruct.hetero import KINDS  # the kinds of heterogeneity the seed reports

UNLABELLED = -1   # label of a run row the seed did not classify (held-out particles)


@dataclass
class SeedStates:
    """rows: (M,) int64 rows of the run's per-particle arrays; state: (M,) int64 in 0..K-1 (0 = largest state);
    score: (M,) float32 (K = 2: log posterior odds of state 1; else the first coordinate); path: the file they came
    from; coords: (M, q) float32 continuous coordinates (q >= 1) or None; kind: "discrete", "continuous" or
    "homogeneous" (from the file, or derived from K and coords for files without it); others: (n,) int64 state of
    every run row under the seed's mixture at its final pose (latents.npz ``state``), which labels the rows the
    seed did not classify, or None (those rows stay :data:`UNLABELLED`)."""

    rows: np.ndarray
    state: np.ndarray
    score: np.ndarray
    path: Path
    coords: np.ndarray | None = None
    kind: str = "discrete"
    others: np.ndarray | None = None

    @property
    def n_states(self) -> int:
        return int(self.state.max()) + 1

    @property
    def q(self) -> int:
        """Number of continuous coordinates (0 without coords)."""
        return 0 if self.coords is None else int(self.coords.shape[1])

    @property
    def continuous(self) -> bool:
        """True when the seed's answer is a continuum: no separated states (K = 1) but coordinates."""
        return self.kind == "continuous" or (self.n_states == 1 and self.coords is not None)

    def _labels(self) -> np.ndarray:
        """The labels of the labelled rows: the seed's own, then (with :attr:`others`) every other row's."""
        if self.others is None:
            return self.state
        return self.labels_for_rows(len(self.others))

    def counts(self) -> np.ndarray:
        """(K,) particles per state (every labelled run row)."""
        lab = self._labels()
        return np.bincount(lab[lab >= 0], minlength=self.n_states)

    @property
    def n_labelled(self) -> int:
        """Run rows with a state: the seed's, and with :attr:`others` every row."""
        return int(np.sum(self._labels() >= 0))

    def rows_of(self, k: int) -> np.ndarray:
        """Run rows labelled state ``k`` (the seed's in file order; with :attr:`others`, every row in row order)."""
        if self.others is None:
            return self.rows[self.state == k]
        return np.flatnonzero(self._labels() == k)

    def _check_rows(self, n: int) -> None:
        if len(self.rows) and int(self.rows.max()) >= n:
            raise InputError(f"labels particle row {int(self.rows.max())} but the run has {n} particles", self.path)

    def labels_for_rows(self, n: int) -> np.ndarray:
        """(n,) int64 state of every run row: the seed's own label where it classified the row, else the state at
        the row's final pose (:attr:`others`), else :data:`UNLABELLED` (-1). :attr:`others` must cover the ``n``
        rows: labels of another run's particles are an error, not silently dropped."""
        self._check_rows(n)
        if self.others is not None and len(self.others) != n:
            raise InputError(f"states for {len(self.others)} particles given beside this file, but the run has {n}",
                             self.path)
        out = (np.asarray(self.others, np.int64).copy() if self.others is not None
               else np.full(n, UNLABELLED, np.int64))
        out[self.rows] = self.state
        return out

    def coords_for_rows(self, n: int) -> np.ndarray | None:
        """(n, q) float32 seed coordinates of every run row, NaN for rows the seed did not classify (held-out
        particles); None when the file has no coordinates."""
        if self.coords is None:
            return None
        self._check_rows(n)
        out = np.full((n, self.q), np.nan, np.float32)
        out[self.rows] = self.coords
        return out

    def coordinate_for_rows(self, n: int, j: int = 1) -> np.ndarray | None:
        """(n,) float32 seed coordinate ``j`` (1-based: 1 = the strongest) of every run row, NaN for unclassified
        rows; None without coordinates. ValueError for a j outside 1..q."""
        c = self.coords_for_rows(n)
        if c is None:
            return None
        if not 1 <= int(j) <= self.q:
            raise ValueError(f"seed coordinate {j}: the seed has {self.q} coordinate(s) (1..{self.q})")
        return c[:, int(j) - 1]


def read_seed_states(path: str | Path, n_particles: int | None = None) -> SeedStates:
    """Read and check a ``seed_states.npz``; ``n_particles`` (the run's particle count) bounds its row indices.

    Raises InputError naming the file for anything malformed: not an .npz, a missing array, arrays of different
    lengths or not 1-D, no particles, non-integer or out-of-range or repeated rows, labels that are not 0..K-1 with
    every state present (K = 1 is legal), non-finite scores; with the optional ``coords``: not (M, q) floating point,
    non-finite; with the optional ``kind``: not a 0-d string, not one of :data:`KINDS`, or contradicting K and coords
    ("discrete" needs K >= 2; "continuous" K = 1 and coords; "homogeneous" K = 1 and no coords). A (M, 0) coords
    array reads as no coords.
    """
    path = Path(path)
    rows, state, score, coords, kind = _load_arrays(path)
    rows, state = _check_labels(rows, state, score, n_particles, path)
    K = int(state.max()) + 1
    if coords is not None:
        coords = _check_coords(coords, len(rows), path)
    kind = _check_kind(kind, K, coords, path)
    return SeedStates(rows=rows, state=state, score=score.astype(np.float32), path=path, coords=coords, kind=kind)


def _load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The arrays index, state, state_score, coords (or None) and kind (or None) of the npz, unchecked."""
    try:
        if not zipfile.is_zipfile(path):
            raise InputError("not an npz archive (numpy.savez) of seed state labels", path)
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("index", "state", "state_score") if k not in f.files]
            if missing:
                raise InputError(f"not a seed state file: array(s) {', '.join(missing)} missing "
                                 f"(has {', '.join(f.files) or 'none'})", path)
            rows, state, score = f["index"], f["state"], f["state_score"]
            coords = f["coords"] if "coords" in f.files else None
            kind = f["kind"] if "kind" in f.files else None
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"unreadable seed state file ({type(exc).__name__}: {exc})", path) from None
    return rows, state, score, coords, kind


def _check_labels(rows: np.ndarray, state: np.ndarray, score: np.ndarray, n_particles: int | None, path: Path
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Check index, state and state_score (1-D, same non-zero length, integer rows in range and unique, labels
    0..K-1 all present, finite float scores); returns rows and state as int64."""
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
    return rows, state


def _check_coords(coords: np.ndarray, m: int, path: Path) -> np.ndarray | None:
    """Check coords is (m, q) finite floating point; returns it as float32, or None for q = 0."""
    if coords.ndim != 2 or coords.shape[0] != m:
        raise InputError(f"coords must have shape (M, q) with M = {m} particles, got {coords.shape}",
                         path)
    if coords.dtype.kind != "f":
        raise InputError(f"coords must hold floating-point numbers, got dtype {coords.dtype}", path)
    if not np.all(np.isfinite(coords)):
        raise InputError(f"coords hold {int((~np.isfinite(coords)).sum())} NaN/Inf value(s)", path)
    return coords.astype(np.float32) if coords.shape[1] else None


def _check_kind(kind: np.ndarray | None, K: int, coords: np.ndarray | None, path: Path) -> str:
    """The file's kind, checked against K states and the coords; derived from them when the file has none."""
    if kind is None:
        return "discrete" if K >= 2 else ("continuous" if coords is not None else "homogeneous")
    if kind.ndim != 0 or kind.dtype.kind not in "US":
        raise InputError(f"kind must be a single string, got dtype {kind.dtype} shape {kind.shape}", path)
    kind = kind.item()
    kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else str(kind)
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", path)
    q = 0 if coords is None else coords.shape[1]
    if kind == "discrete" and K < 2:
        raise InputError("kind 'discrete' with a single state (K = 1): expected K >= 2", path)
    if kind != "discrete" and K != 1:
        raise InputError(f"kind {kind!r} with {K} states: expected one state (K = 1)", path)
    if kind == "continuous" and q == 0:
        raise InputError("kind 'continuous' without coords (M, q >= 1)", path)
    if kind == "homogeneous" and q:
        raise InputError(f"kind 'homogeneous' with {q} coordinate(s): expected none", path)
    return kind
