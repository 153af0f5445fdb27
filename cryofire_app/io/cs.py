"""cryoSPARC `.cs` metadata (a numpy structured array on disk): CTF and poses as cryoDRGN parses them.

- CTF rows (cryoDRGN `parse_ctf_csparc`): `[blob/shape[0], blob/psize_A, ctf/df1_A, ctf/df2_A,
  degrees(ctf/df_angle_rad), ctf/accel_kv, ctf/cs_mm, ctf/amp_contrast, degrees(ctf/phase_shift_rad)]`.
- Poses (cryoDRGN `parse_pose_csparc`): `rot = expmap(alignments3D/pose)^T`; translation in pixels
  `t = +alignments3D/shift`, stored in pose.pkl as `t / D`. Files with only `alignments2D` have no 3D poses.
- Images: `blob/path` (a leading '>' is dropped) and `blob/idx` (0-based frame). `blob/sign` is not applied
  (cryoDRGN does not apply it either: the same images come out of the .cs and the matching .star).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .euler import rotvec_to_rot

POSE_KEY = "alignments3D/pose"
SHIFT_KEY = "alignments3D/shift"


def read_cs(path: str | Path, allow_empty: bool = False) -> np.ndarray:
    """Load a .cs file as a numpy structured array (no pickles allowed).

    Raises InputError for unreadable files, non-structured arrays, and (unless allow_empty) files with 0 rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise InputError("not a cryoSPARC .cs file (no numpy array header: a .cs is a numpy record array, "
                         f"starting with \\x93NUMPY; this file starts with {magic!r})", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InputError("not a cryoSPARC .cs file: it holds pickled (object) data, which is refused (a .cs is a "
                             "plain numpy record array)", path) from None
        raise InputError(f"not a readable cryoSPARC .cs file (truncated or damaged: {exc})", path) from None
    except Exception as exc:
        raise InputError(f"not a readable cryoSPARC .cs file ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        raise InputError("not a cryoSPARC .cs file (expected a structured numpy array)", path)
    if len(arr) == 0 and not allow_empty:
        raise InputError(f"the file contains 0 particles ({len(arr.dtype.names)} fields, no rows)", path)
    return arr


def _as_cs(path_or_arr, allow_empty: bool = False) -> tuple[np.ndarray, Path | None]:
    if isinstance(path_or_arr, np.ndarray):
        return path_or_arr, None
    return read_cs(path_or_arr, allow_empty=allow_empty), Path(path_or_arr)


def _need(arr: np.ndarray, fields, path, what: str) -> None:
    missing = [f for f in fields if f not in arr.dtype.names]
    if missing:
        raise InputError(f"no {what}: missing field(s) {', '.join(missing)}", path)


def cs_has_ctf(arr: np.ndarray) -> bool:
    return "ctf/df1_A" in arr.dtype.names


def cs_has_poses(arr: np.ndarray) -> bool:
    return POSE_KEY in arr.dtype.names and SHIFT_KEY in arr.dtype.names


def cs_box_size(arr: np.ndarray) -> np.ndarray | None:
    """Per-particle box size from blob/shape (N,), or None."""
    return arr["blob/shape"][:, 0].astype(np.int64) if "blob/shape" in arr.dtype.names else None


def parse_ctf_cs(path: str | Path | np.ndarray) -> np.ndarray:
    """CTF of every particle as cryoDRGN `parse_ctf_csparc` writes it: float32 (N, 9). See module docstring."""
    arr, p = _as_cs(path)
    fields = ["blob/shape", "blob/psize_A", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv",
              "ctf/cs_mm", "ctf/amp_contrast", "ctf/phase_shift_rad"]
    _need(arr, fields, p, "CTF parameters")
    out = np.zeros((len(arr), 9), dtype=np.float32)
    out[:, 0] = arr["blob/shape"][:, 0]
    out[:, 1] = arr["blob/psize_A"]
    out[:, 2] = arr["ctf/df1_A"]
    out[:, 3] = arr["ctf/df2_A"]
    out[:, 4] = np.degrees(arr["ctf/df_angle_rad"])
    out[:, 5] = arr["ctf/accel_kv"]
    out[:, 6] = arr["ctf/cs_mm"]
    out[:, 7] = arr["ctf/amp_contrast"]
    out[:, 8] = np.degrees(arr["ctf/phase_shift_rad"])
    return out


def cs_poses_px(path: str | Path | np.ndarray, source: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rot (N, 3, 3) float64 cryoDRGN convention, translations (N, 2) in pixels). InputError for 2D-only files.

    source: the file name to put in error messages when an array is passed.
    """
    arr, p = _as_cs(path)
    p = p or source
    if not cs_has_poses(arr):
        what = " (the file has only 2D classification alignments)" if "alignments2D/pose" in arr.dtype.names else ""
        raise InputError(f"no 3D poses: fields {POSE_KEY} / {SHIFT_KEY} are absent{what}", p)
    rot = rotvec_to_rot(arr[POSE_KEY])
    trans = np.asarray(arr[SHIFT_KEY], dtype=np.float64)
    return rot, trans


def parse_pose_cs(path: str | Path | np.ndarray, D: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Poses as cryoDRGN `parse_pose_csparc -D D` writes them: `(rot (N, 3, 3), trans (N, 2) = shift_px / D)`.

    D defaults to blob/shape. rot is float64 here; cryoDRGN's pickle holds float32 of the same values.
    """
    arr, p = _as_cs(path)
    rot, trans = cs_poses_px(arr, p)
    if D is None:
        d = cs_box_size(arr)
        if d is None:
            raise InputError("no blob/shape field: the box size D must be given", p)
        D_arr = d.astype(np.float64)
    else:
        D_arr = np.full(len(arr), float(D))
    return rot, trans / D_arr[:, None]


def cs_image_refs(path: str | Path | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices 0-based (N,) int64, stack paths (N,) str as written, leading '>' removed)."""
    arr, p = _as_cs(path)
    _need(arr, ["blob/path", "blob/idx"], p, "image locations")
    raw = arr["blob/path"]
    paths = np.array([(x.decode() if isinstance(x, bytes) else str(x)) for x in raw], dtype=object)
    paths = np.array([s[1:] if s.startswith(">") else s for s in paths], dtype=object)
    return arr["blob/idx"].astype(np.int64), paths
