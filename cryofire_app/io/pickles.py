"""cryoDRGN pickle interchange (ctf.pkl, pose.pkl, z.pkl, ind.pkl) with a restricted, safe unpickler.

Formats, exactly as cryoDRGN writes them (plain `pickle.dump` of numpy objects):
- ctf.pkl: float32 `(N, 9)` rows `[D, apix, dfU (A), dfV (A), dfang (deg), kV, Cs (mm), w, phase (deg)]`.
- pose.pkl: tuple `(rot (N, 3, 3), trans (N, 2))`, `trans` in fractions of the box (pixels / D); or `rot` alone.
- z.pkl: float32 `(N, zdim)`.  ind.pkl: int64 `(M,)` 0-based particle indices.

User pickles are never passed to `pickle.load`: `load_pickle_safe` admits only numpy arrays/dtypes/scalars, tuples,
lists, dicts and builtin scalars, and rejects every other global (so a crafted file cannot run code).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_pickle_dump
from .errors import InputError

# (module, name) pairs a numpy pickle needs, for numpy 1.x (numpy.core) and 2.x (numpy._core) module paths.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(mod, name)
     for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
     for name in ("_reconstruct", "scalar")]
    + [(mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("builtins", "complex"), ("__builtin__", "complex")]  # __builtin__: protocol <= 2 name
    + [("_codecs", "encode")]  # protocol <= 2 pickles store bytes as _codecs.encode(str, 'latin1')
)
# numpy 2 pickles dtypes of kind `numpy.dtypes.Float32DType` etc. only as `numpy.dtype`; allow the DType classes too.
_ALLOWED_MODULE_PREFIXES = ("numpy.dtypes",)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module in _ALLOWED_MODULE_PREFIXES and name.endswith("DType")):
            mod_name = module
            # numpy 2 renamed numpy.core -> numpy._core; numpy 1 lacks numpy._core
            try:
                return super().find_class(mod_name, name)
            except (ImportError, AttributeError):
                alt = module.replace("numpy._core", "numpy.core") if "_core" in module else \
                    module.replace("numpy.core", "numpy._core")
                return super().find_class(alt, name)
        raise InputError(f"refusing to load pickle: it references the forbidden global '{module}.{name}' "
                         "(only numpy arrays, tuples, lists, dicts and scalars are allowed)", self._path)


def load_pickle_safe(path: str | Path) -> Any:
    """Load a pickle that may only hold numpy arrays/scalars, tuples, lists, dicts and builtin scalars.

    Raises InputError naming the file and the forbidden global for anything else; nothing in the file is executed.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except InputError:
        raise
    except Exception as exc:  # malformed pickle: UnpicklingError, EOFError, ValueError, ...
        raise InputError(f"not a readable pickle ({type(exc).__name__}: {exc})", path) from None


def read_ctf_pkl(path: str | Path) -> np.ndarray:
    """cryoDRGN ctf.pkl -> float32 (N, 9). InputError if it is not an (N, 9) numeric array."""
    obj = load_pickle_safe(path)
    arr = np.asarray(obj) if isinstance(obj, np.ndarray) else None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 9 or not np.issubdtype(arr.dtype, np.number):
        shape = getattr(obj, "shape", type(obj).__name__)
        raise InputError(f"not a cryoDRGN CTF pickle: expected an (N, 9) array, found {shape}", path)
    return arr.astype(np.float32)


def write_ctf_pkl(path: str | Path, ctf: np.ndarray) -> None:
    """Write (N, 9) cryoDRGN CTF rows as a float32 array pickle (atomic)."""
    ctf = np.asarray(ctf, dtype=np.float32)
    if ctf.ndim != 2 or ctf.shape[1] != 9:
        raise ValueError(f"write_ctf_pkl: expected (N, 9), got {ctf.shape}")
    atomic_pickle_dump(path, ctf)


def read_pose_pkl(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """cryoDRGN pose.pkl -> (rot (N, 3, 3), trans_frac (N, 2) or None). Translations are fractions of the box."""
    obj = load_pickle_safe(path)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        rot, trans = obj
    elif isinstance(obj, (tuple, list)) and len(obj) == 1:
        rot, trans = obj[0], None
    else:
        rot, trans = obj, None
    if not isinstance(rot, np.ndarray) or rot.ndim != 3 or rot.shape[1:] != (3, 3) or \
            not np.issubdtype(rot.dtype, np.number):
        raise InputError("not a cryoDRGN pose pickle: expected rot (N, 3, 3) numbers [and trans (N, 2)], found "
                         f"{getattr(rot, 'shape', type(rot).__name__)}", path)
    if trans is not None:
        if not isinstance(trans, np.ndarray) or trans.shape != (len(rot), 2) or \
                not np.issubdtype(trans.dtype, np.number):
            raise InputError(f"pose pickle: trans has shape {getattr(trans, 'shape', None)}, expected "
                             f"({len(rot)}, 2)", path)
        trans = np.asarray(trans)
    return np.asarray(rot), trans


def write_pose_pkl(path: str | Path, rot: np.ndarray, trans_frac: np.ndarray | None) -> None:
    """Write cryoDRGN pose.pkl: `(rot, trans_frac)` (or `rot` alone when trans_frac is None). Atomic."""
    rot = np.asarray(rot)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"write_pose_pkl: rot must be (N, 3, 3), got {rot.shape}")
    if trans_frac is None:
        atomic_pickle_dump(path, rot)
        return
    trans = np.asarray(trans_frac)
    if trans.shape != (len(rot), 2):
        raise ValueError(f"write_pose_pkl: trans must be ({len(rot)}, 2), got {trans.shape}")
    atomic_pickle_dump(path, (rot, trans))


def read_z_pkl(path: str | Path) -> np.ndarray:
    """cryoDRGN z.pkl -> float32 (N, zdim)."""
    obj = load_pickle_safe(path)
    if not isinstance(obj, np.ndarray) or obj.ndim not in (1, 2) or not np.issubdtype(obj.dtype, np.number):
        raise InputError(f"not a latent (z) pickle: expected an (N, zdim) array of numbers, found "
                         f"{getattr(obj, 'shape', type(obj).__name__)}", path)
    z = obj.astype(np.float32)
    return z[:, None] if z.ndim == 1 else z


def write_z_pkl(path: str | Path, z: np.ndarray) -> None:
    """Write latents (N, zdim) as a float32 array pickle (atomic)."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"write_z_pkl: expected (N, zdim), got {z.shape}")
    atomic_pickle_dump(path, z)


def read_ind_pkl(path: str | Path) -> np.ndarray:
    """cryoDRGN ind.pkl (0-based particle indices) -> int64 (M,)."""
    obj = load_pickle_safe(path)
    arr = np.asarray(obj) if isinstance(obj, (np.ndarray, list, tuple)) else None
    if arr is None or arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputError("not an index pickle: expected a 1D integer array", path)
    if arr.size and arr.min() < 0:
        raise InputError("index pickle holds negative indices", path)
    return arr.astype(np.int64)


def write_ind_pkl(path: str | Path, ind: np.ndarray) -> None:
    """Write 0-based particle indices as an int64 array pickle (atomic)."""
    ind = np.asarray(ind)
    if ind.ndim != 1 or not (np.issubdtype(ind.dtype, np.integer) or ind.size == 0):
        raise ValueError(f"write_ind_pkl: expected 1D integer indices, got {ind.dtype} {ind.shape}")
    atomic_pickle_dump(path, ind.astype(np.int64))
