"""`load_particles`: one entry point for `.mrcs/.mrc` stacks, `.txt` lists, RELION `.star` and cryoSPARC `.cs`.

Returns a `ParticleSet` whose CTF rows, translations and pixel size describe the images *as loaded*:
- If the metadata box (rlnImageSize / blob/shape / ctf.pkl column 0) differs from the stack's box (a downsampled
  stack), the pixel size is scaled by `D_meta / D`, CTF rows get `[D, apix * D_meta / D, ...]` and translations in
  pixels are scaled by `D / D_meta` (logged). This is cryoDRGN's handling of downsampled stacks.
- Pixel size: from the metadata (STAR, .cs, ctf.pkl; or `apix=`), else the MRC header; a header voxel size of 0 is
  treated as unknown (logged). With no pixel size at all `ParticleSet.apix` is None and the caller must ask for one.
- Image files named in metadata are found like cryoDRGN's `--datadir`: see `resolve_image_paths`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .cs import cs_box_size, cs_has_ctf, cs_has_poses, cs_image_refs, cs_poses_px, parse_ctf_cs, read_cs
from .errors import InputError
from .pickles import read_ctf_pkl, read_pose_pkl
from .stack import ImageStack
from .star import (
    OPTICS_KEY,
    parse_ctf_star,
    parse_image_names,
    read_star,
    star_box_size,
    star_pixel_size,
    star_rotations,
    star_translations_px,
)

log = logging.getLogger(__name__)

STACK_SUFFIXES = (".mrcs", ".mrc", ".st", ".map")


@dataclass
class ParticleSet:
    """Particle images plus per-particle metadata, all of length N.

    images: lazy `ImageStack`. ctf: (N, 9) float32 cryoDRGN rows `[D, apix, dfU, dfV, dfang, kV, Cs, w, phase]` or
    None. rots: (N, 3, 3) float32 cryoDRGN rotations or None. trans_px: (N, 2) float32 pixels (+t re-centres the
    particle) or None. apix: Angstrom per pixel of the images or None. index: (N,) int64 row in the user's original
    metadata/stack (0-based), kept through `subset`. uid: (N,) uint64 cryoSPARC uid or None. optics_group: (N,)
    int64 or None. source: the file given to `load_particles`. image_names: (N,) `k@file` as written in the
    metadata (None for plain stacks).
    """

    images: ImageStack
    ctf: np.ndarray | None
    rots: np.ndarray | None
    trans_px: np.ndarray | None
    apix: float | None
    index: np.ndarray
    uid: np.ndarray | None
    optics_group: np.ndarray | None
    source: Path
    image_names: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def D(self) -> int:
        return self.images.D

    def subset(self, idx) -> "ParticleSet":
        """Particles `idx` (index array, boolean mask or slice), keeping `index`, `uid` and names."""
        n = len(self)
        if isinstance(idx, slice):
            ids = np.arange(*idx.indices(n))
        else:
            arr = np.asarray(idx)
            ids = np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"subset indices out of range for {n} particles")

        def sel(a):
            return None if a is None else a[ids]

        return replace(self, images=self.images.subset(ids), ctf=sel(self.ctf), rots=sel(self.rots),
                       trans_px=sel(self.trans_px), index=self.index[ids], uid=sel(self.uid),
                       optics_group=sel(self.optics_group), image_names=sel(self.image_names),
                       notes=list(self.notes))


def resolve_image_paths(names: Sequence[str], metadata: Path, datadir: str | Path | None = None) -> list[Path]:
    """Find the image files named in a metadata file, in this order of candidates (first existing file wins):

    1. with `datadir`: datadir/name, then datadir/basename(name);
    2. the name as written (absolute, or relative to the current directory);
    3. relative to the metadata file's folder: folder/name, then folder/basename(name).

    Raises InputError listing the candidates tried for the first name not found.
    """
    meta_dir = Path(metadata).resolve().parent
    out = []
    for name in names:
        p = Path(name)
        cands: list[Path] = []
        if datadir is not None:
            cands += [Path(datadir) / p, Path(datadir) / p.name]
        cands.append(p)
        if not p.is_absolute():
            cands += [meta_dir / p, meta_dir / p.name]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            tried = ", ".join(dict.fromkeys(str(c) for c in cands))
            hint = "" if datadir is not None else "; pass --datadir DIR pointing at the folder of the stacks"
            raise InputError(f"image file {str(name)!r} not found (tried {tried}){hint}", metadata)
        out.append(found)
    return out


def _stack_from_refs(meta: Path, names: np.ndarray, frames: np.ndarray, datadir, check_finite: bool) -> ImageStack:
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    files = resolve_image_paths(list(uniq), meta, datadir)
    try:
        return ImageStack(files, np.asarray(inv).reshape(-1), frames, check_finite=check_finite)
    except InputError as exc:
        raise InputError(f"{exc} (referenced by {meta.name})") from None


def _read_txt_list(path: Path, datadir) -> list[Path]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    names = [ln for ln in lines if ln and not ln.startswith("#")]
    if not names:
        raise InputError("the list names no image stacks", path)
    return resolve_image_paths(names, path, datadir)


def _rescale(D: int, D_meta: np.ndarray | None, apix_meta: np.ndarray | None, source: Path, notes: list[str]):
    """Pixel size of the loaded images and the factor D / D_meta for translations."""
    if D_meta is None or np.all(D_meta == D):
        return apix_meta, 1.0
    if len(np.unique(D_meta)) != 1:
        raise InputError(f"the metadata lists several box sizes {sorted(set(D_meta.tolist()))}", source)
    d0 = int(D_meta[0])
    msg = (f"metadata box {d0} px but the images are {D} px: treating the stack as resampled, pixel size scaled by "
           f"{d0}/{D}")
    log.info("%s: %s", source, msg)
    notes.append(msg)
    return (None if apix_meta is None else apix_meta * d0 / D), D / d0


def _pixel_sizes(D: int, D_meta: np.ndarray | None, px_meta: np.ndarray | None, apix: float | None, n: int,
                 source: Path, notes: list[str]):
    """(pixel size at the metadata's box, pixel size of the loaded images, translation scale D / D_meta).

    `apix` (a user override) is the pixel size of the images as loaded.
    """
    if apix is None:
        eff, tscale = _rescale(D, D_meta, px_meta, source, notes)
        return px_meta, eff, tscale
    _, tscale = _rescale(D, D_meta, None, source, notes)
    eff = np.full(n, float(apix))
    return eff * tscale, eff, tscale


def _common_apix(apix: np.ndarray | float | None, source: Path, notes: list[str]) -> float | None:
    if apix is None:
        return None
    a = np.atleast_1d(np.asarray(apix, dtype=np.float64))
    vals, counts = np.unique(np.round(a, 6), return_counts=True)
    if len(vals) > 1:
        msg = f"pixel size differs between particles ({', '.join(f'{v:g}' for v in vals)} A); using the most common"
        log.warning("%s: %s", source, msg)
        notes.append(msg)
    return float(vals[np.argmax(counts)])


@dataclass
class _Metadata:
    """What one particle file gives, before the pickles and the final pixel size: the images and per-particle
    arrays (None when absent; see `ParticleSet`), and ``apix_meta`` (A, per particle or scalar) of the images as
    loaded."""

    images: ImageStack
    ctf: np.ndarray | None = None
    rots: np.ndarray | None = None
    trans_px: np.ndarray | None = None
    uid: np.ndarray | None = None
    optics: np.ndarray | None = None
    names: np.ndarray | None = None
    apix_meta: np.ndarray | float | None = None


def _load_star(path: Path, datadir, apix: float | None, w: float | None, kv: float | None, cs: float | None,
               require_even: bool, check_finite: bool, notes: list[str]) -> _Metadata:
    """Images, CTF rows, poses (translations in px of the loaded images), optics groups and names of a RELION
    STAR; the pixel size is the STAR's (rescaled to the stack's box), else `apix`, else the MRC header's."""
    table = read_star(path)
    if len(table) == 0:
        raise InputError("the STAR file lists 0 particles", path)
    frames, files = parse_image_names(table)
    images = _stack_from_refs(path, files, frames, datadir, check_finite)
    D = images.D
    _check_box(images, require_even, path)
    px, eff_px, tscale = _pixel_sizes(D, star_box_size(table), star_pixel_size(table), apix, len(table),
                                      path, notes)
    if eff_px is None and images.apix is not None:
        eff_px = np.full(len(table), images.apix)
        px = eff_px * tscale
        notes.append("pixel size taken from the MRC header (none in the STAR)")
    out = _Metadata(images=images)
    if table.has("rlnDefocusU"):
        if eff_px is None:
            raise InputError("the STAR has CTF values but no pixel size, and the image header says 0: give "
                             "the pixel size (--apix)", path)
        out.ctf = parse_ctf_star(table, D=D, apix=eff_px, w=w, kv=kv, cs=cs)
    rot = star_rotations(table)
    if rot is not None:
        out.rots = rot.astype(np.float32)
        t = star_translations_px(table, px)
        if t is None:
            notes.append("no origin columns in the STAR: translations set to 0")
            t = np.zeros((len(table), 2))
        out.trans_px = (t * tscale).astype(np.float32)
    if table.has(OPTICS_KEY):
        out.optics = table.column(OPTICS_KEY).astype(np.int64)
    out.names = table.particles["rlnImageName"].astype(str).to_numpy()
    out.apix_meta = eff_px
    return out


def _load_cs(path: Path, datadir, apix: float | None, w: float | None, kv: float | None, cs: float | None,
             require_even: bool, check_finite: bool, notes: list[str]) -> _Metadata:
    """Images, CTF rows, 3D poses (translations in px of the loaded images), uids, exposure groups and names of a
    cryoSPARC .cs; the pixel size is blob/psize_A (rescaled to the stack's box) or `apix`."""
    arr = read_cs(path)
    frames, files = cs_image_refs(arr)
    images = _stack_from_refs(path, files, frames, datadir, check_finite)
    D = images.D
    _check_box(images, require_even, path)
    px_cs = arr["blob/psize_A"].astype(np.float64) if "blob/psize_A" in arr.dtype.names else None
    _, eff_px, tscale = _pixel_sizes(D, cs_box_size(arr), px_cs, apix, len(arr), path, notes)
    out = _Metadata(images=images)
    if cs_has_ctf(arr):
        ctf_rows = parse_ctf_cs(arr)
        ctf_rows[:, 0] = D
        if eff_px is None:
            raise InputError("no pixel size (blob/psize_A) in the .cs: give the pixel size (--apix)", path)
        ctf_rows[:, 1] = eff_px
        for col, val in ((5, kv), (6, cs), (7, w)):
            if val is not None:
                ctf_rows[:, col] = val
        out.ctf = ctf_rows
    if cs_has_poses(arr):
        r, t = cs_poses_px(arr, path)
        out.rots = r.astype(np.float32)
        out.trans_px = (t * tscale).astype(np.float32)
    elif "alignments2D/pose" in arr.dtype.names:
        notes.append("only 2D classification alignments in the .cs: no 3D poses")
    out.uid = arr["uid"].astype(np.uint64) if "uid" in arr.dtype.names else None
    if "ctf/exp_group_id" in arr.dtype.names:
        out.optics = arr["ctf/exp_group_id"].astype(np.int64)
    out.names = np.array([f"{f + 1}@{p}" for f, p in zip(frames, files)], dtype=object)
    out.apix_meta = eff_px
    return out


def _apply_ctf_pkl(meta: _Metadata, ctf: str | Path, path: Path, apix: float | None, notes: list[str]) -> None:
    """Replace the CTF rows by a cryoDRGN ctf.pkl's, at the loaded box (pixel size rescaled as for the metadata,
    or `apix`); its pixel sizes become the metadata's."""
    N, D = len(meta.images), meta.images.D
    c = read_ctf_pkl(ctf)
    _check_metadata_values(c, None, None, Path(ctf))
    if len(c) != N:
        raise InputError(f"the CTF pickle has {len(c)} rows but {path.name} has {N} particles", ctf)
    c_px, _ = _rescale(D, c[:, 0].astype(np.int64), c[:, 1].astype(np.float64), Path(ctf), notes)
    c = c.copy()
    c[:, 0] = D
    c[:, 1] = c_px if apix is None else apix
    meta.ctf = c
    meta.apix_meta = c[:, 1].astype(np.float64)


def _apply_pose_pkl(meta: _Metadata, poses: str | Path, path: Path, notes: list[str]) -> None:
    """Replace the poses by a cryoDRGN pose.pkl's (translations t / D -> px); without translations in the pickle
    the metadata's are kept, or set to 0."""
    N, D = len(meta.images), meta.images.D
    r, t = read_pose_pkl(poses)
    _check_metadata_values(None, r, t, Path(poses))
    if len(r) != N:
        raise InputError(f"the pose pickle has {len(r)} poses but {path.name} has {N} particles", poses)
    meta.rots = r.astype(np.float32)
    if t is not None:
        meta.trans_px = (np.asarray(t, np.float64) * D).astype(np.float32)
    elif meta.trans_px is None:
        notes.append("the pose pickle has no translations: set to 0")
        meta.trans_px = np.zeros((N, 2), np.float32)


def _final_apix(apix_meta: np.ndarray | float | None, hdr: float | None, apix: float | None, path: Path,
                notes: list[str]) -> float | None:
    """The images' pixel size (A): the metadata's most common one (or `apix`), else the MRC header's ``hdr``;
    logs and notes a missing header value, a header that disagrees with the metadata, or no pixel size at all."""
    apix_final = _common_apix(apix_meta, path, notes)
    if apix_final is None:
        apix_final = hdr
        if hdr is None:
            msg = "no pixel size: the MRC header says 0 and the metadata gives none; supply it (--apix)"
            log.warning("%s: %s", path, msg)
            notes.append(msg)
    elif hdr is None:
        given = "the apix argument" if apix is not None else "the metadata"
        msg = f"voxel size is 0 in the MRC header; using {apix_final:g} A from {given}"
        log.info("%s: %s", path, msg)
        notes.append(msg)
    elif abs(hdr - apix_final) > 1e-3 * apix_final and apix is None:
        msg = f"MRC header pixel size {hdr:g} A differs from the metadata's {apix_final:g} A; using the metadata"
        log.info("%s: %s", path, msg)
        notes.append(msg)
    return apix_final


def load_particles(path: str | Path, datadir: str | Path | None = None, ctf: str | Path | None = None,
                   poses: str | Path | None = None, *, apix: float | None = None, w: float | None = None,
                   kv: float | None = None, cs: float | None = None, require_even: bool = True,
                   check_finite: bool = True) -> ParticleSet:
    """Open particles from `.mrcs/.mrc` (one stack), `.txt` (a list of stacks), `.star` or `.cs`.

    datadir: folder to look for the stacks named in a .star/.cs/.txt (see `resolve_image_paths`).
    ctf / poses: cryoDRGN ctf.pkl / pose.pkl that replace the metadata's CTF / poses (counts must match).
    apix, w, kv, cs: override / supply the pixel size (A), amplitude contrast, voltage (kV), Cs (mm).
    require_even: refuse odd box sizes (training needs an even D). check_finite: reads raise on NaN/Inf pixels.
    Raises InputError for every problem with the input, naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    suffix = path.suffix.lower()
    notes: list[str] = []

    if suffix == ".star":
        meta = _load_star(path, datadir, apix, w, kv, cs, require_even, check_finite, notes)
    elif suffix == ".cs":
        meta = _load_cs(path, datadir, apix, w, kv, cs, require_even, check_finite, notes)
    elif suffix == ".txt":
        images = ImageStack.from_files(_read_txt_list(path, datadir), check_finite=check_finite)
        _check_box(images, require_even, path)
        meta = _Metadata(images=images, apix_meta=apix)
    elif suffix in STACK_SUFFIXES:
        images = ImageStack.from_files([path], check_finite=check_finite)
        _check_box(images, require_even, path)
        meta = _Metadata(images=images, apix_meta=apix)
    else:
        raise InputError(f"unknown particle file type {suffix!r} (expected .mrcs, .mrc, .txt, .star or .cs)", path)

    N = len(meta.images)
    if N == 0:
        raise InputError("no particle images", path)

    _check_metadata_values(meta.ctf, meta.rots, meta.trans_px, path)
    if ctf is not None:
        _apply_ctf_pkl(meta, ctf, path, apix, notes)
    if poses is not None:
        _apply_pose_pkl(meta, poses, path, notes)
    apix_final = _final_apix(meta.apix_meta, meta.images.apix, apix, path, notes)
    return ParticleSet(images=meta.images, ctf=meta.ctf, rots=meta.rots, trans_px=meta.trans_px, apix=apix_final,
                       index=np.arange(N, dtype=np.int64), uid=meta.uid, optics_group=meta.optics, source=path,
                       image_names=meta.names, notes=notes)


def _check_metadata_values(ctf: np.ndarray | None, rots: np.ndarray | None, trans: np.ndarray | None,
                           source: Path) -> None:
    """Refuse NaN/Inf metadata and non-positive pixel sizes / voltages (they would silently poison training)."""
    for name, arr in (("CTF", ctf), ("rotation", rots), ("translation", trans)):
        if arr is not None and not np.isfinite(arr).all():
            rows = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))
            raise InputError(f"{len(rows)} particle(s) have NaN/Inf {name} values (first: row {rows[0] + 1})", source)
    if ctf is not None:
        for col, what in ((1, "pixel size"), (5, "voltage")):
            bad = np.flatnonzero(ctf[:, col] <= 0)
            if bad.size:
                raise InputError(f"{bad.size} particle(s) have a {what} <= 0 (first: row {bad[0] + 1})", source)


def _check_box(images: ImageStack, require_even: bool, source: Path) -> None:
    if require_even and images.D % 2:
        raise InputError(f"the images are {images.D} x {images.D} pixels; an even box size is required "
                         f"(crop or pad to {images.D - 1} or {images.D + 1})", images.files[0])
