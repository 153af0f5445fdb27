"""`ImageStack`: lazy random access to particle images spread over one or many MRC files.

Nothing is read at construction except the headers (each file is checked against truncation). `stack[idx]` reads
only the requested images (one read per run of consecutive frames) and returns float32 `(n, D, D)` `[row, col]`,
whatever the MRC mode (int8, int16, uint16, float16, float32). The images are read with plain file reads, not
memory maps: the operating system still caches the file, but a pass over a large stack does not grow the process's
resident memory. Open files are cached (least recently used, `max_open` at a time), so a dataset of thousands of
files never exhausts file handles. The object pickles without its open files (DataLoader workers).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .mrc import MrcHeader, read_mrc_header

log = logging.getLogger(__name__)


def _as_indices(idx, n: int) -> np.ndarray:
    if isinstance(idx, (int, np.integer)):
        i = int(idx)
        if i < -n or i >= n:
            raise IndexError(f"image index {i} out of range for a stack of {n}")
        return np.array([i % n], dtype=np.int64)
    if isinstance(idx, slice):
        return np.arange(*idx.indices(n), dtype=np.int64)
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean mask of shape {arr.shape} for a stack of {n}")
        return np.flatnonzero(arr).astype(np.int64)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"image indices out of range for a stack of {n}")
    return arr % n if arr.size else arr


class ImageStack:
    """Images `k` = frame `frames[k]` of file `files[file_index[k]]`.

    Build with `ImageStack.from_files(paths)` (every image of each file, in order) or
    `ImageStack(files, file_index, frames)` (e.g. from a STAR's `k@file` names).
    D: image box (square images required; odd D is allowed here, `load_particles` refuses it for training).
    apix: header voxel size of the first file, or None when the header says 0.
    check_finite: raise InputError when a read image holds NaN/Inf (cheap: done on the images read).
    """

    def __init__(self, files: Sequence[str | Path], file_index: np.ndarray, frames: np.ndarray,
                 check_finite: bool = True, max_open: int = 64, _headers: list[MrcHeader] | None = None):
        self.files = [Path(f) for f in files]
        self.file_index = np.asarray(file_index, dtype=np.int64).reshape(-1)
        self.frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        if self.file_index.shape != self.frames.shape:
            raise ValueError("file_index and frames must have the same length")
        self.check_finite = check_finite
        self.max_open = max_open
        self._files: OrderedDict[int, object] = OrderedDict()   # open data files, least recently used first
        self._lock = threading.Lock()  # the cache may be used from a GUI thread and a training thread
        self.headers = _headers if _headers is not None else [read_mrc_header(f) for f in self.files]
        if not self.files:
            raise InputError("no image files given")
        ny, nx = self.headers[0].shape[1:]
        for h in self.headers:
            hy, hx = h.shape[1:]
            if hy != hx:
                raise InputError(f"images are not square: {hx} x {hy} pixels (x, y)", h.path)
            if (hy, hx) != (ny, nx):
                raise InputError(f"images are {hx} x {hy} pixels but {self.headers[0].path.name} has {nx} x {ny}",
                                 h.path)
        self.D = int(nx)
        if len(self.frames):
            counts = np.array([h.shape[0] for h in self.headers])
            bad = np.flatnonzero(self.frames >= counts[self.file_index])
            if np.any(self.frames < 0):
                bad = np.union1d(bad, np.flatnonzero(self.frames < 0))
            if bad.size:
                k = int(bad[0])
                f = self.headers[self.file_index[k]]
                raise InputError(
                    f"{bad.size} image reference(s) out of range, e.g. image {self.frames[k] + 1} (1-based) of a file "
                    f"holding {f.shape[0]} images (particle {k})", f.path)

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], **kw) -> "ImageStack":
        """All images of each file, concatenated in order."""
        headers = [read_mrc_header(p) for p in paths]
        counts = [h.shape[0] for h in headers]
        file_index = np.repeat(np.arange(len(paths)), counts)
        frames = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)
        return cls(paths, file_index, frames, _headers=headers, **kw)

    # --- basic properties -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.D, self.D)

    @property
    def apix(self) -> float | None:
        return self.headers[0].info.apix

    @property
    def dtypes(self) -> list[str]:
        """Distinct on-disk data types (e.g. ['float32'] or ['float16'])."""
        return sorted({str(h.dtype.newbyteorder("=")) for h in self.headers})

    def __repr__(self) -> str:
        return (f"ImageStack({len(self)} images of {self.D}x{self.D} from {len(self.files)} file(s), "
                f"dtype {'/'.join(self.dtypes)})")

    # --- reading --------------------------------------------------------------------------------------------
    def _handle(self, fi: int):
        """The open file ``fi`` (caller holds ``_lock``)."""
        fh = self._files.get(fi)
        if fh is None:
            try:
                fh = open(self.headers[fi].path, "rb", buffering=0)
            except OSError as exc:
                raise InputError(f"cannot open the image data ({exc})", self.headers[fi].path) from None
            self._files[fi] = fh
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(fi)
        return fh

    def _read_frames(self, fi: int, fr: np.ndarray) -> np.ndarray:
        """Frames ``fr`` of file ``fi`` in the file's own dtype, ``(len(fr), ny, nx)``, one read per run of
        consecutive frames."""
        h = self.headers[fi]
        per = int(np.prod(h.shape[1:])) * h.dtype.itemsize
        raw = np.empty((len(fr),) + tuple(h.shape[1:]), dtype=h.dtype)
        buf = memoryview(raw.reshape(-1).view(np.uint8))
        starts = np.flatnonzero(np.r_[True, np.diff(fr) != 1])
        ends = np.r_[starts[1:], len(fr)]
        with self._lock:
            fh = self._handle(fi)
            try:
                for a, b in zip(starts, ends):
                    fh.seek(h.offset + int(fr[a]) * per)
                    view, done = buf[a * per:b * per], 0
                    while done < len(view):
                        got = fh.readinto(view[done:])
                        if not got:
                            raise InputError(f"the file ended while reading image {int(fr[a]) + 1} (1-based): it "
                                             "was truncated after it was opened", h.path)
                        done += got
            except OSError as exc:
                raise InputError(f"cannot read the image data ({exc})", h.path) from None
        return raw

    def read(self, idx, check_finite: bool | None = None) -> np.ndarray:
        """Images `idx` (int, slice, index array or boolean mask) as float32 `(n, D, D)`."""
        ids = _as_indices(idx, len(self))
        out = np.empty((len(ids), self.D, self.D), dtype=np.float32)
        if not len(ids):
            return out
        fidx = self.file_index[ids]
        frames = self.frames[ids]
        for fi in np.unique(fidx):
            pos = np.flatnonzero(fidx == fi)
            out[pos] = self._read_frames(int(fi), frames[pos])
        check = self.check_finite if check_finite is None else check_finite
        if check:
            finite = np.isfinite(out).reshape(len(ids), -1).all(1)
            if not finite.all():
                k = int(np.flatnonzero(~finite)[0])
                raise InputError(f"image {frames[k] + 1} (1-based; particle {ids[k]}) contains NaN or Inf pixels",
                                 self.files[fidx[k]])
        return out

    def __getitem__(self, idx) -> np.ndarray:
        return self.read(idx)

    def subset(self, idx) -> "ImageStack":
        """A new stack holding images `idx` (in that order); headers are shared, nothing is read."""
        ids = _as_indices(idx, len(self))
        return ImageStack(self.files, self.file_index[ids], self.frames[ids], check_finite=self.check_finite,
                          max_open=self.max_open, _headers=self.headers)


    def close(self) -> None:
        """Close the cached files (they are reopened on demand)."""
        with self._lock:
            while self._files:
                self._files.popitem()[1].close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_files"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._files = OrderedDict()
        self._lock = threading.Lock()


def check_finite(stack: ImageStack, n_sample: int | None = 1000, seed: int = 0, batch: int = 256) -> int:
    """Check `n_sample` random images (all if None or >= len) for NaN/Inf; returns the number checked.

    Raises InputError naming the file, the image and how many of the checked images are bad.
    """
    n = len(stack)
    if n_sample is None or n_sample >= n:
        ids = np.arange(n)
    else:
        ids = np.sort(np.random.default_rng(seed).choice(n, size=n_sample, replace=False))
    bad: list[int] = []
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        imgs = stack.read(chunk, check_finite=False)
        ok = np.isfinite(imgs).reshape(len(chunk), -1).all(1)
        bad.extend(int(j) for j in chunk[~ok])
    if bad:
        k = bad[0]
        raise InputError(f"{len(bad)} of {len(ids)} checked images contain NaN or Inf pixels, first: image "
                         f"{stack.frames[k] + 1} (1-based; particle {k})", stack.files[stack.file_index[k]])
    return len(ids)
