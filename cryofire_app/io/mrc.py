"""MRC maps and image stacks (via `mrcfile`): read, read a cubic map, write atomically, stream a stack to disk.

Axis order: arrays are returned and written as `(z, y, x)` for volumes and `(n, y, x)` for stacks, i.e. `[section,
row, column]` as MRC/ChimeraX/RELION store them. Files whose header axis mapping (mapc, mapr, maps) is not (1, 2, 3)
are permuted to `(z, y, x)` on read. Voxel size and origin are in Angstrom, in x, y, z order.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import data_dtype_from_header, data_shape_from_header

from .atomic import atomic_mrc, commit, temp_path
from .errors import InputError

log = logging.getLogger(__name__)

_HEADER_BYTES = 1024


@dataclass(frozen=True)
class MrcInfo:
    """What the header of an MRC file says.

    apix: voxel size in Angstrom along x (None when the header stores 0, a common placeholder).
    origin: (x, y, z) origin in Angstrom. shape: array shape as returned by `read_mrc` (z, y, x) or (n, y, x).
    mode: MRC data mode (0 int8, 1 int16, 2 float32, 6 uint16, 12 float16, ...). is_stack: header space group 0.
    """

    apix: float | None
    origin: tuple
    shape: tuple
    mode: int
    is_stack: bool = False
    axis_order: tuple = (1, 2, 3)


@dataclass(frozen=True)
class MrcHeader:
    """Header facts needed to read the data block of one file image by image (see `read_mrc_header`)."""

    path: Path
    shape: tuple  # (nz, ny, nx) in file order
    dtype: np.dtype
    offset: int  # bytes before the data block (1024 + extended header)
    info: MrcInfo
    file_bytes: int

    @property
    def expected_bytes(self) -> int:
        return self.offset + int(np.prod(self.shape)) * self.dtype.itemsize


def _apix_from_header(mrc) -> float | None:
    vs = mrc.voxel_size
    x = float(vs.x)
    return x if np.isfinite(x) and x > 0 else None


def _axis_order(header) -> tuple:
    return (int(header.mapc), int(header.mapr), int(header.maps))


def _zyx_permutation(axis_order: tuple) -> tuple:
    """Transpose that turns file-order data (dims = maps, mapr, mapc) into (z, y, x)."""
    mapc, mapr, maps = axis_order
    labels = [maps, mapr, mapc]  # axis label (1=x, 2=y, 3=z) of each data dimension
    if sorted(labels) != [1, 2, 3]:
        raise ValueError(f"invalid axis mapping mapc,mapr,maps = {axis_order}")
    return tuple(labels.index(a) for a in (3, 2, 1))


def _open(path: Path, header_only: bool = False):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.open(str(path), mode="r", permissive=True, header_only=header_only)
        for w in caught:  # old/odd headers (no 'MAP ' id, zero machine stamp): not fatal, size checks follow
            log.debug("%s: %s", path, w.message)
        return mrc
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable MRC file ({exc})", path) from None


def read_mrc_header(path: str | Path) -> MrcHeader:
    """Read only the header of an MRC file and check that the file is as large as the header says.

    Raises InputError for a missing/unreadable file, a truncated file, or a compressed file (which cannot be mapped).
    """
    path = Path(path)
    with _open(path, header_only=True) as mrc:
        if mrc.header is None:
            raise InputError("not a readable MRC file (no header)", path)
        try:
            dtype = data_dtype_from_header(mrc.header)
        except ValueError:
            raise InputError(f"unsupported MRC mode {int(mrc.header.mode)}: not an MRC file, or its header is damaged",
                             path) from None
        shape = tuple(int(s) for s in data_shape_from_header(mrc.header))
        if len(shape) == 4:
            raise InputError(f"volume stacks (space group {int(mrc.header.ispg)}) are not supported", path)
        if len(shape) == 2:
            shape = (1,) + shape
        offset = _HEADER_BYTES + int(mrc.header.nsymbt)
        order = _axis_order(mrc.header)
        info = MrcInfo(apix=_apix_from_header(mrc), origin=tuple(float(v) for v in mrc.header.origin.item()),
                       shape=shape, mode=int(mrc.header.mode), is_stack=int(mrc.header.ispg) == 0,
                       axis_order=order)
        compressed = type(mrc).__name__ != "MrcFile"
    if compressed:
        raise InputError("compressed (gzip/bzip2) particle stacks cannot be read image by image; decompress it first",
                         path)
    hdr = MrcHeader(path=path, shape=shape, dtype=np.dtype(dtype), offset=offset, info=info,
                    file_bytes=os.path.getsize(path))
    if hdr.file_bytes < hdr.expected_bytes:
        per_image = int(np.prod(shape[1:])) * hdr.dtype.itemsize
        held = max(0, (hdr.file_bytes - offset) // per_image) if per_image else 0
        raise InputError(
            f"truncated MRC file: the header says {shape[0]} images of {shape[2]}x{shape[1]} "
            f"({hdr.expected_bytes} bytes) but the file has {hdr.file_bytes} bytes (room for {held} image(s))", path)
    return hdr


def read_mrc(path: str | Path) -> tuple[np.ndarray, MrcInfo]:
    """Read a whole MRC/MRCS file (gzip/bzip2 too) into memory.

    Returns `(data float32, MrcInfo)`; volumes come back `(z, y, x)` whatever the header's axis mapping, stacks
    `(n, y, x)`, single images `(y, x)`. Use `ImageStack` for large particle stacks (read image by image).
    """
    path = Path(path)
    with _open(path) as mrc:
        if mrc.data is None:
            raise InputError("MRC file holds no data", path)
        order = _axis_order(mrc.header)
        data = np.asarray(mrc.data)
        if data.ndim == 3 and order != (1, 2, 3):
            try:
                data = np.transpose(data, _zyx_permutation(order))
            except ValueError as exc:
                raise InputError(str(exc), path) from None
        data = np.ascontiguousarray(data, dtype=np.float32)
        info = MrcInfo(apix=_apix_from_header(mrc), origin=tuple(float(v) for v in mrc.header.origin.item()),
                       shape=data.shape, mode=int(mrc.header.mode), is_stack=bool(mrc.is_image_stack()),
                       axis_order=order)
    return data, info


def read_map(path: str | Path) -> tuple[np.ndarray, MrcInfo]:
    """Read a 3D density map as a cubic `(D, D, D)` float32 array in `(z, y, x)` order.

    Raises InputError if the file is not a 3D volume, is not cubic (e.g. 16x16x128), or holds NaN/Inf.
    `info.apix` is None when the header voxel size is 0; the caller must then supply it (e.g. `--apix`).
    """
    vol, info = read_mrc(path)
    if vol.ndim != 3:
        raise InputError(f"expected a 3D map, found an array of shape {vol.shape}", path)
    if not (vol.shape[0] == vol.shape[1] == vol.shape[2]):
        z, y, x = vol.shape
        raise InputError(f"map is not cubic: {x} x {y} x {z} voxels (x, y, z); crop or resample it to a cube first",
                         path)
    if not np.isfinite(vol).all():
        raise InputError(f"map contains {int((~np.isfinite(vol)).sum())} NaN/Inf voxels", path)
    if info.apix is None:
        log.info("%s: voxel size is 0 in the header; pass the pixel size explicitly", path)
    return vol, info


def write_mrc(path: str | Path, array: np.ndarray, apix: float = 1.0, origin: tuple | None = None,
              stack: bool = False) -> None:
    """Write `array` (volume `(z, y, x)`, image `(y, x)`, or stack `(n, y, x)` with `stack=True`) as float32 MRC.

    The voxel size (Angstrom) and the origin `(x, y, z)` in Angstrom are set in the header. Written to a temporary file
    in the same folder and renamed into place, so a reader never sees a half-written file.
    """
    path = Path(path)
    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"write_mrc: expected a 2D or 3D array, got shape {data.shape}")
    with atomic_mrc(path) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = float(apix)
        if origin is not None:
            ox, oy, oz = (float(v) for v in origin)
            mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = ox, oy, oz
        mrc.update_header_stats()


class MrcStackWriter:
    """Stream an image stack `(n, D, D)` to an MRC file batch by batch, never holding the whole stack in memory.

    Usage::

        with MrcStackWriter("particles.mrcs", D=128, apix=1.5) as w:
            for batch in batches:      # each (b, 128, 128)
                w.write(batch)

    Data go to a temporary file in the target folder; on a clean exit the header's image count and statistics are
    fixed and the file is renamed into place. On an exception the temporary file is removed and nothing is written.
    """

    def __init__(self, path: str | Path, D: int, apix: float = 1.0):
        self.path = Path(path)
        self.D = int(D)
        self.apix = float(apix)
        self.n = 0
        self._tmp: Path | None = None
        self._fh = None
        self._min = np.inf
        self._max = -np.inf
        self._sum = 0.0
        self._sumsq = 0.0

    def __enter__(self) -> "MrcStackWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        tmp = temp_path(self.path)
        try:
            # let mrcfile build a valid stack header (one placeholder image), then keep only the header
            with mrcfile.new(str(tmp), overwrite=True) as mrc:
                mrc.set_data(np.zeros((1, self.D, self.D), dtype=np.float32))
                mrc.set_image_stack()
                mrc.voxel_size = self.apix
                header_bytes = _HEADER_BYTES + int(mrc.header.nsymbt)
            self._fh = open(tmp, "r+b")
            self._fh.truncate(header_bytes)
            self._fh.seek(header_bytes)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._tmp = tmp

    def write(self, batch: np.ndarray) -> None:
        """Append images `(b, D, D)` (or one `(D, D)` image); converted to float32."""
        if self._fh is None:
            raise RuntimeError("MrcStackWriter is not open")
        b = np.asarray(batch, dtype=np.float32)
        if b.ndim == 2:
            b = b[None]
        if b.ndim != 3 or b.shape[1:] != (self.D, self.D):
            raise ValueError(f"MrcStackWriter({self.path}): expected (n, {self.D}, {self.D}) images, got {b.shape}")
        if len(b) == 0:
            return
        self._min = min(self._min, float(b.min()))
        self._max = max(self._max, float(b.max()))
        b64 = b.astype(np.float64)
        self._sum += float(b64.sum())
        self._sumsq += float(np.square(b64).sum())
        self._fh.write(np.ascontiguousarray(b).tobytes())  # native float32, as in the header mrcfile wrote
        self.n += len(b)

    def close(self) -> Path:
        """Fix the header (image count, statistics) and rename the file into place. Returns the final path."""
        if self._fh is None:
            raise RuntimeError("MrcStackWriter is not open")
        try:
            self._fh.flush()
            self._fh.close()
            self._fh = None
            hdr = np.memmap(self._tmp, dtype=HEADER_DTYPE, mode="r+", shape=(1,))
            npx = self.n * self.D * self.D
            mean = self._sum / npx if npx else 0.0
            var = max(self._sumsq / npx - mean * mean, 0.0) if npx else 0.0
            hdr["nz"] = self.n
            hdr["mz"] = 1
            hdr["dmin"] = self._min if npx else 0.0
            hdr["dmax"] = self._max if npx else -1.0
            hdr["dmean"] = mean if npx else -2.0
            hdr["rms"] = np.sqrt(var) if npx else -1.0
            hdr.flush()
            del hdr
            commit(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (removes the temporary file)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

