"""RELION STAR metadata (via `starfile`): particle/optics tables, cryoDRGN-compatible CTF and pose parsing, writing.

Handles RELION 3.0 (one particle loop, no optics; pixel size from rlnDetectorPixelSize / rlnMagnification),
RELION 3.1+ and 5 (data_optics + data_particles in either order; optics values are joined onto each particle by
rlnOpticsGroup), and any number of optics groups.

Conventions (same as cryoDRGN `parse_ctf_star` / `parse_pose_star`):
- CTF rows `[D, apix, dfU (A), dfV (A), dfang (deg), kV, Cs (mm), w, phase (deg)]` float32.
- Poses: `rot = R_zyz(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)^T` (see `euler.py`); translation in pixels
  `t = +(rlnOriginX, rlnOriginY)` or `+(rlnOriginXAngst, rlnOriginYAngst) / apix`; cryoDRGN's pose.pkl stores `t / D`.
- rlnImageName `k@file`: k is 1-based in the file, stored 0-based here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from .atomic import atomic_path
from .errors import InputError
from .euler import euler_relion_to_rot, rot_to_euler_relion

log = logging.getLogger(__name__)

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast", "rlnPhaseShift")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
OPTICS_KEY = "rlnOpticsGroup"
# columns read as numbers (a value that is not one is reported with its row, not left to fail in a conversion later)
NUMERIC_COLUMNS = CTF_COLUMNS + ANGLE_COLUMNS + (
    "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst", "rlnImagePixelSize", "rlnImageSize",
    "rlnDetectorPixelSize", "rlnMagnification", OPTICS_KEY, "rlnClassNumber")


@dataclass
class StarTable:
    """A particle table with the optics values joined onto every row.

    particles: one row per particle (optics columns included). optics: the optics table (None for RELION 3.0).
    path: the STAR file. version: '3.0' (no optics block) or '3.1+'.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None
    path: Path

    @property
    def version(self) -> str:
        return "3.0" if self.optics is None else "3.1+"

    def __len__(self) -> int:
        return len(self.particles)

    def has(self, *cols: str) -> bool:
        return all(c in self.particles.columns for c in cols)

    def column(self, name: str) -> np.ndarray:
        return self.particles[name].to_numpy()


def _is_loop(block) -> bool:
    return isinstance(block, pd.DataFrame)


INTEGER_COLUMNS = (OPTICS_KEY, "rlnImageSize", "rlnClassNumber")


def _check_loop(df: pd.DataFrame, block: str, path: Path) -> pd.DataFrame:
    """Refuse short rows (values missing at the end of a row: a file truncated mid-row, or a row with too few
    columns), non-numbers in the numeric columns and missing values where an integer or an image name is needed,
    naming the block, the row (1-based within the loop) and the column. A literal NaN inside a row of values is left
    to the checks of what it means (e.g. "NaN/Inf CTF values")."""
    missing = df.isna().to_numpy()
    if missing.any():
        n_col = missing.shape[1]
        # per row: the number of trailing missing cells, and whether those are all of its missing cells
        trailing = np.argmin(missing[:, ::-1], axis=1)
        trailing[missing.all(1)] = n_col
        short = (trailing > 0) & (missing.sum(1) == trailing)
        if short.any():
            r = int(np.flatnonzero(short)[0])
            last = " (the last row: the file looks truncated)" if r == len(df) - 1 else ""
            raise InputError(f"data_{block}: row {r + 1} of {len(df)} has {n_col - int(trailing[r])} of {n_col} "
                             f"values, missing {', '.join(str(c) for c in df.columns[n_col - int(trailing[r]):][:4])}"
                             f"{', ...' if trailing[r] > 4 else ''}{last}; {int(short.sum())} short row(s) in all",
                             path)
    for col in NUMERIC_COLUMNS:
        if col in df.columns and not pd.api.types.is_numeric_dtype(df[col]):
            num = pd.to_numeric(df[col], errors="coerce")
            bad = np.flatnonzero((num.isna() & df[col].notna()).to_numpy())
            if bad.size:
                r = int(bad[0])
                raise InputError(f"data_{block}: row {r + 1}: {col} is {df[col].iloc[r]!r}, not a number "
                                 f"({bad.size} such row(s))", path)
            df[col] = num
    for col in INTEGER_COLUMNS + ("rlnImageName",):
        if col in df.columns and df[col].isna().any():
            r = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise InputError(f"data_{block}: row {r + 1}: {col} is missing (NaN)", path)
    for col in INTEGER_COLUMNS:
        if col in df.columns:
            v = df[col].to_numpy(np.float64)
            bad = np.flatnonzero(~np.isfinite(v) | (v != np.round(v)))
            if bad.size:
                raise InputError(f"data_{block}: row {int(bad[0]) + 1}: {col} is {float(v[bad[0]]):g}, not an integer",
                                 path)
    return df


def read_star(path: str | Path) -> StarTable:
    """Read a particle STAR file (any RELION version) into a `StarTable`.

    The particle block is `data_particles` if present, else the loop holding rlnImageName, else the first loop with
    Euler angles or defocus. Raises InputError for unreadable files, STARs without a particle loop, and particles
    whose optics group is missing from data_optics.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(f"not a readable STAR file ({type(exc).__name__}: {exc})", path) from None
    loops = {name: b for name, b in blocks.items() if _is_loop(b)}
    particles = None
    if "particles" in loops:
        particles = loops["particles"]
    else:
        for pred in (lambda df: "rlnImageName" in df.columns,
                     lambda df: "rlnAngleRot" in df.columns or "rlnDefocusU" in df.columns):
            cands = [df for name, df in loops.items() if name != "optics" and pred(df)]
            if cands:
                particles = cands[0]
                break
    if particles is None:
        raise InputError(f"no particle table found (blocks: {', '.join(repr(b) for b in blocks) or 'none'})", path)
    pname = next(name for name, b in loops.items() if b is particles)
    particles = _check_loop(particles.reset_index(drop=True).copy(), pname or "particles", path)
    optics = loops.get("optics")
    if optics is not None and OPTICS_KEY in optics.columns and len(optics):
        optics = _check_loop(optics.reset_index(drop=True).copy(), "optics", path)
        if OPTICS_KEY not in particles.columns:
            if len(optics) != 1:
                raise InputError(f"{len(optics)} optics groups but the particles have no {OPTICS_KEY} column", path)
            particles[OPTICS_KEY] = optics[OPTICS_KEY].iloc[0]
        groups = optics[OPTICS_KEY].to_numpy()
        if len(np.unique(groups)) != len(groups):
            raise InputError(f"duplicate optics group numbers in data_optics: {list(groups)}", path)
        missing = sorted(int(g) for g in set(particles[OPTICS_KEY].unique()) - set(groups))
        if missing:
            raise InputError(f"particles refer to optics group(s) {missing} that data_optics does not define", path)
        pos = pd.Index(groups).get_indexer(particles[OPTICS_KEY].to_numpy())
        for col in optics.columns:
            if col != OPTICS_KEY and col not in particles.columns:
                particles[col] = optics[col].to_numpy()[pos]
    else:
        optics = None
    return StarTable(particles=particles, optics=optics, path=path)


def _as_table(star: str | Path | StarTable) -> StarTable:
    return star if isinstance(star, StarTable) else read_star(star)


def star_pixel_size(table: StarTable) -> np.ndarray | None:
    """Per-particle image pixel size in Angstrom: rlnImagePixelSize, else 1e4 * rlnDetectorPixelSize (um) /
    rlnMagnification (RELION 3.0), else None."""
    if table.has("rlnImagePixelSize"):
        return table.column("rlnImagePixelSize").astype(np.float64)
    if table.has("rlnDetectorPixelSize", "rlnMagnification"):
        return 1e4 * table.column("rlnDetectorPixelSize").astype(np.float64) / \
            table.column("rlnMagnification").astype(np.float64)
    return None


def star_box_size(table: StarTable) -> np.ndarray | None:
    """Per-particle box size (rlnImageSize from the optics table) or None."""
    return table.column("rlnImageSize").astype(np.int64) if table.has("rlnImageSize") else None


def parse_ctf_star(path: str | Path | StarTable, D: int | None = None, apix: float | np.ndarray | None = None,
                   w: float | None = None, kv: float | None = None, cs: float | None = None,
                   ps: float | None = None) -> np.ndarray | None:
    """CTF parameters of every particle, as cryoDRGN `parse_ctf_star` writes them: float32 (N, 9).

    D and apix may be scalars or (N,) arrays. Arguments given here override the STAR (like cryoDRGN's
    `-D --Apix -w --kv --cs --ps`). D defaults to rlnImageSize, apix to rlnImagePixelSize or
    1e4 * rlnDetectorPixelSize / rlnMagnification; a missing rlnPhaseShift is 0.
    Returns None when the STAR has no rlnDefocusU column (no CTF at all). Raises InputError naming the missing
    columns when defocus is present but other CTF values are neither in the file nor given.
    """
    t = _as_table(path)
    if not t.has("rlnDefocusU"):
        return None
    n = len(t)
    out = np.zeros((n, 9), dtype=np.float64)
    if D is None:
        D_col = star_box_size(t)
        if D_col is None:
            raise InputError("no rlnImageSize in the STAR: the box size D must be given", t.path)
        out[:, 0] = D_col
    else:
        out[:, 0] = D
    if apix is None:
        px = star_pixel_size(t)
        if px is None:
            raise InputError("no pixel size in the STAR (rlnImagePixelSize or rlnDetectorPixelSize + "
                             "rlnMagnification): give the pixel size (--apix)", t.path)
        out[:, 1] = px
    else:
        out[:, 1] = apix
    overrides = {"rlnVoltage": kv, "rlnSphericalAberration": cs, "rlnAmplitudeContrast": w, "rlnPhaseShift": ps}
    missing = []
    for i, col in enumerate(CTF_COLUMNS):
        if overrides.get(col) is not None:
            out[:, 2 + i] = overrides[col]
        elif t.has(col):
            out[:, 2 + i] = t.column(col).astype(np.float64)
        elif col == "rlnPhaseShift":
            out[:, 2 + i] = 0.0
        else:
            missing.append(col)
    if missing:
        hint = {"rlnVoltage": "kV", "rlnSphericalAberration": "Cs", "rlnAmplitudeContrast": "w (e.g. 0.1)"}
        raise InputError("CTF columns missing: " + ", ".join(missing) + "; give "
                         + ", ".join(hint.get(m, m) for m in missing) + " explicitly", t.path)
    return out.astype(np.float32)


def star_translations_px(table: StarTable, apix: float | np.ndarray | None = None) -> np.ndarray | None:
    """Per-particle translations in pixels `(N, 2)` = +(rlnOriginX, rlnOriginY), or +rlnOrigin*Angst / apix.

    apix defaults to the STAR's pixel size. Returns None when there are no origin columns.
    """
    if table.has("rlnOriginX", "rlnOriginY"):
        return np.stack([table.column("rlnOriginX"), table.column("rlnOriginY")], 1).astype(np.float64)
    if table.has("rlnOriginXAngst", "rlnOriginYAngst"):
        if apix is None:
            apix = star_pixel_size(table)
            if apix is None:
                raise InputError("origins are in Angstrom but the STAR has no pixel size: give --apix", table.path)
        a = np.broadcast_to(np.asarray(apix, dtype=np.float64), (len(table),))
        ang = np.stack([table.column("rlnOriginXAngst"), table.column("rlnOriginYAngst")], 1).astype(np.float64)
        return ang / a[:, None]
    return None


def star_rotations(table: StarTable) -> np.ndarray | None:
    """cryoDRGN `rot (N, 3, 3)` from rlnAngleRot/Tilt/Psi (degrees), or None without all three angle columns."""
    if not table.has(*ANGLE_COLUMNS):
        return None
    euler = np.stack([table.column(c).astype(np.float64) for c in ANGLE_COLUMNS], 1)
    if not np.isfinite(euler).all():
        raise InputError("non-finite Euler angles in the STAR", table.path)
    return euler_relion_to_rot(euler)


def parse_pose_star(path: str | Path | StarTable, D: int | None = None,
                    apix: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Poses as cryoDRGN `parse_pose_star -D D` writes them: `(rot (N, 3, 3) float64, trans (N, 2) = t_px / D)`.

    D defaults to rlnImageSize. Without origin columns the translations are 0 (cryoDRGN leaves them uninitialised).
    Raises InputError without Euler angle columns.
    """
    t = _as_table(path)
    rot = star_rotations(t)
    if rot is None:
        raise InputError("no Euler angle columns (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)", t.path)
    if D is None:
        d = star_box_size(t)
        if d is None:
            raise InputError("no rlnImageSize in the STAR: the box size D must be given", t.path)
        D_arr = d.astype(np.float64)
    else:
        D_arr = np.full(len(t), float(D))
    trans = star_translations_px(t, apix)
    if trans is None:
        log.info("%s: no origin columns; translations set to 0", t.path)
        trans = np.zeros((len(t), 2))
    return rot, trans / D_arr[:, None]


def parse_image_names(table: StarTable) -> tuple[np.ndarray, np.ndarray]:
    """rlnImageName `k@file` -> (frame indices 0-based (N,) int64, file names (N,) str as written).

    A name without `@` is image 0 of that file; RELION's type suffix `:mrcs` / `:mrc` is dropped.
    Raises InputError for malformed names or k < 1.
    """
    if not table.has("rlnImageName"):
        raise InputError("no rlnImageName column: the STAR does not say where the images are", table.path)
    names = table.particles["rlnImageName"].astype(str).to_numpy()
    frames = np.zeros(len(names), dtype=np.int64)
    files = np.empty(len(names), dtype=object)
    for i, name in enumerate(names):
        if "@" in name:
            k, f = name.split("@", 1)
            try:
                frames[i] = int(k) - 1
            except ValueError:
                raise InputError(f"row {i + 1}: malformed rlnImageName {name!r}", table.path) from None
            if frames[i] < 0:
                raise InputError(f"row {i + 1}: image number {k} in {name!r} must be >= 1", table.path)
            files[i] = f
        else:
            frames[i] = 0
            files[i] = name
        for tag in (":mrcs", ":mrc"):
            if files[i].endswith(tag):
                files[i] = files[i][: -len(tag)]
    return frames, files


def _image_name_list(image_names) -> list[str]:
    """`k@file` names (k 1-based) from a sequence of names, or from a tuple `(stack_file, N)`."""
    if isinstance(image_names, tuple) and len(image_names) == 2 and isinstance(image_names[1], (int, np.integer)):
        stack, n = image_names
        image_names = [f"{k}@{stack}" for k in range(1, int(n) + 1)]
    return [str(s) for s in image_names]


def _ctf_columns(ctf: np.ndarray | None, n: int, parts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Add the defocus (A), astigmatism angle and phase shift (degrees) columns of cryoDRGN CTF rows (n, 9) to
    ``parts``; returns the optics groups: the distinct (kV, Cs, w) triples (G, 3) and each particle's 1-based group
    (one default group 300 kV, 2.7 mm, 0.1 without a CTF)."""
    if ctf is None:
        return np.array([[300.0, 2.7, 0.1]]), np.ones(n, dtype=np.int64)
    ctf = np.asarray(ctf, dtype=np.float64)
    if ctf.shape != (n, 9):
        raise ValueError(f"write_particles_star: ctf must be ({n}, 9), got {ctf.shape}")
    parts["rlnDefocusU"] = ctf[:, 2]
    parts["rlnDefocusV"] = ctf[:, 3]
    parts["rlnDefocusAngle"] = ctf[:, 4]
    parts["rlnPhaseShift"] = ctf[:, 8]
    triples = np.round(ctf[:, 5:8], 6)
    uniq, group = np.unique(triples, axis=0, return_inverse=True)
    return uniq, np.asarray(group).reshape(-1) + 1


def _optics_table(uniq: np.ndarray, apix: float, D: int) -> pd.DataFrame:
    """The data_optics table: one group per (kV, Cs, w) row of ``uniq``, images of D px at ``apix`` A."""
    return pd.DataFrame({
        OPTICS_KEY: np.arange(1, len(uniq) + 1, dtype=np.int64),
        "rlnOpticsGroupName": [f"opticsGroup{i}" for i in range(1, len(uniq) + 1)],
        "rlnVoltage": uniq[:, 0], "rlnSphericalAberration": uniq[:, 1], "rlnAmplitudeContrast": uniq[:, 2],
        "rlnImagePixelSize": np.full(len(uniq), float(apix)),
        "rlnImageSize": np.full(len(uniq), int(D), dtype=np.int64),
        "rlnImageDimensionality": np.full(len(uniq), 2, dtype=np.int64),
        "rlnCtfDataAreCtfPremultiplied": np.zeros(len(uniq), dtype=np.int64),
    })


def write_particles_star(path: str | Path, image_names, ctf: np.ndarray | None, rot: np.ndarray | None,
                         trans_px: np.ndarray | None, apix: float, D: int,
                         extra_columns: dict | None = None) -> None:
    """Write a RELION 3.1 particle STAR (data_optics + data_particles), atomically.

    image_names: (N,) strings `k@file` (k 1-based), or a tuple `(stack_file, N)` meaning `1@file .. N@file`.
    ctf: (N, 9) cryoDRGN rows or None; one optics group per distinct (kV, Cs, w) triple.
    rot: (N, 3, 3) cryoDRGN rotations -> rlnAngleRot/Tilt/Psi (degrees). trans_px: (N, 2) pixels ->
    rlnOriginXAngst/YAngst = +t * apix. extra_columns: name -> (N,) values appended to data_particles
    (a leading 'rln'/'_rln' is kept as given).
    """
    path = Path(path)
    names = _image_name_list(image_names)
    n = len(names)
    parts: dict[str, np.ndarray | list] = {"rlnImageName": names}
    uniq, group = _ctf_columns(ctf, n, parts)
    if rot is not None:
        rot = np.asarray(rot)
        if rot.shape != (n, 3, 3):
            raise ValueError(f"write_particles_star: rot must be ({n}, 3, 3), got {rot.shape}")
        euler = rot_to_euler_relion(rot)
        parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"] = euler[:, 0], euler[:, 1], euler[:, 2]
    if trans_px is not None:
        trans = np.asarray(trans_px, dtype=np.float64)
        if trans.shape != (n, 2):
            raise ValueError(f"write_particles_star: trans_px must be ({n}, 2), got {trans.shape}")
        parts["rlnOriginXAngst"] = trans[:, 0] * apix
        parts["rlnOriginYAngst"] = trans[:, 1] * apix
    parts[OPTICS_KEY] = group.astype(np.int64)
    for name, values in (extra_columns or {}).items():
        values = np.asarray(values)
        if len(values) != n:
            raise ValueError(f"write_particles_star: column {name} has {len(values)} values, expected {n}")
        parts[name.lstrip("_")] = values
    optics = _optics_table(uniq, apix, D)
    particles = pd.DataFrame(parts)
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp, float_format="%.6f")
