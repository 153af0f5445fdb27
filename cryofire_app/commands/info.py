"""Describe a particle stack, STAR file, cryoSPARC .cs, list of stacks, or a density map.

For particles: how many, box size, pixel size (and where it came from), on-disk data type, which CTF and pose columns
are present, optics groups, and a NaN/Inf check of a sample of images. For a map: size, voxel size, axis order,
origin and value range. Nothing is written.

examples:
  cryofire info particles.star --datadir Extract/job012/
  cryofire info cryosparc_P12_J24_001_particles.cs --datadir /data/P12
  cryofire info particles.mrcs
  cryofire info emd_1234.map.gz
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError

MAP_SUFFIXES = (".map", ".gz", ".bz2", ".ccp4")
MODE_NAMES = {0: "int8", 1: "int16", 2: "float32", 4: "complex64", 6: "uint16", 12: "float16", 101: "4-bit"}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="particles (.mrcs, .mrc, .txt, .star, .cs) or a map (.mrc, .map, .map.gz, ...)")
    p.add_argument("--datadir", help="folder holding the image stacks named in a .star/.cs/.txt")
    p.add_argument("--as", dest="kind", choices=("auto", "particles", "map"), default="auto",
                   help="read an .mrc as a particle stack or as a map (default: the header decides)")
    p.add_argument("--apix", type=float, help="pixel size of the images in Angstrom, if the files lack it")
    p.add_argument("--kv", type=float, help="voltage (kV), if the metadata lacks it")
    p.add_argument("--cs", type=float, help="spherical aberration (mm), if the metadata lacks it")
    p.add_argument("-w", "--amp-contrast", dest="w", type=float, help="amplitude contrast, if the metadata lacks it")
    p.add_argument("--check", type=int, default=64, metavar="N",
                   help="check N randomly chosen images for NaN/Inf (0: skip; default 64)")


def _row(label: str, text: str) -> str:
    return f"  {label:<16}{text}"


def _fmt_range(a: np.ndarray, unit: str = "", fmt: str = "{:.6g}") -> str:
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (fmt.format(lo) if np.isclose(lo, hi) else f"{fmt.format(lo)} .. {fmt.format(hi)}") + unit


def _is_map(path: Path, kind: str) -> bool:
    if kind != "auto":
        return kind == "map"
    name = path.name.lower()
    if name.endswith(MAP_SUFFIXES):
        return True
    if path.suffix.lower() != ".mrc":
        return False
    from cryofire_app.io.mrc import read_mrc_header

    hdr = read_mrc_header(path)
    return not hdr.info.is_stack  # space group 0 = image stack; anything else is a volume


def describe_map(path: Path) -> list[str]:
    from cryofire_app.io import read_mrc

    vol, info = read_mrc(path)
    lines = [f"{path}", _row("Kind", "density map" if vol.ndim == 3 else "single image")]
    if vol.ndim == 3:
        z, y, x = vol.shape
        cubic = "cubic" if x == y == z else "NOT cubic: training and simulation need a cube"
        lines.append(_row("Size", f"{x} x {y} x {z} voxels (x, y, z); {cubic}"))
        if x == y != z:
            lines.append(_row("Hint", f"if this is a stack of {z} particle images, use --as particles"))
    else:
        lines.append(_row("Size", f"{vol.shape[1]} x {vol.shape[0]} pixels"))
    import mrcfile

    with mrcfile.open(str(path), permissive=True, header_only=True) as m:
        vs = m.voxel_size
        vsz = (float(vs.x), float(vs.y), float(vs.z))
    if info.apix is None:
        lines.append(_row("Voxel size", "0 in the header (unknown): pass --apix where a pixel size is needed"))
    elif np.allclose(vsz, vsz[0]):
        lines.append(_row("Voxel size", f"{vsz[0]:.4g} A"))
    else:
        lines.append(_row("Voxel size", f"{vsz[0]:.4g} x {vsz[1]:.4g} x {vsz[2]:.4g} A (x, y, z; anisotropic)"))
    if info.axis_order != (1, 2, 3):
        lines.append(_row("Axis order", f"{info.axis_order} (columns, rows, sections); returned as (z, y, x)"))
    lines.append(_row("Origin", "(" + ", ".join(f"{v:.4g}" for v in info.origin) + ") A (x, y, z)"))
    lines.append(_row("Data type", f"{MODE_NAMES.get(info.mode, '?')} (MRC mode {info.mode})"))
    finite = np.isfinite(vol)
    if finite.all():
        lines.append(_row("Values", f"min {vol.min():.4g}, max {vol.max():.4g}, mean {vol.mean():.4g}, "
                                    f"std {vol.std():.4g}"))
    else:
        lines.append(_row("Values", f"{int((~finite).sum())} NaN/Inf voxels!"))
    return lines


def _metadata_lines(path: Path) -> list[str]:
    """Describe the metadata of a .star/.cs (works even when the images cannot be found)."""
    suffix = path.suffix.lower()
    if suffix == ".star":
        return _star_lines(path)
    if suffix == ".cs":
        return _cs_lines(path)
    return []


def _star_lines(path: Path) -> list[str]:
    """A RELION .star file: version, rows, box, pixel size, CTF and pose columns, optics groups."""
    from cryofire_app.io.star import CTF_COLUMNS, read_star, star_box_size, star_pixel_size

    lines: list[str] = []
    t = read_star(path)
    ver = "RELION 3.0 style (no optics block)" if t.optics is None else \
        f"RELION 3.1+ ({len(t.optics)} optics group{'s' if len(t.optics) != 1 else ''})"
    lines.append(_row("Kind", f"STAR particle file, {ver}"))
    lines.append(_row("Rows", f"{len(t)}"))
    box = star_box_size(t)
    if box is not None:
        lines.append(_row("Box (STAR)", _fmt_range(box, " px", "{:.0f}")))
    px = star_pixel_size(t)
    lines.append(_row("Pixel (STAR)", "none" if px is None else _fmt_range(px, " A", "{:.4g}")))
    present = [c for c in CTF_COLUMNS if t.has(c)]
    missing = [c for c in CTF_COLUMNS if not t.has(c)]
    if not t.has("rlnDefocusU"):
        lines.append(_row("CTF columns", "none (images treated as CTF-free)"))
    else:
        lines.append(_row("CTF columns", ", ".join(present)))
        if missing:
            lines.append(_row("  missing", ", ".join(missing)
                              + ("" if missing == ["rlnPhaseShift"] else " (must be supplied)")))
    angles = [c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") if t.has(c)]
    origins = [c for c in ("rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst") if t.has(c)]
    lines.append(_row("Pose columns", ", ".join(angles + origins) or "none"))
    if t.optics is not None:
        lines += _optics_table(t)
    return lines


def _optics_table(t) -> list[str]:
    """The optics groups of a RELION 3.1+ STAR table, one right-aligned row per group with its particle count."""
    lines = ["  Optics groups:"]
    cols = [c for c in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration",
                        "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize") if c in t.optics]
    counts = t.particles["rlnOpticsGroup"].value_counts()
    header = [c.replace("rln", "") for c in cols] + ["particles"]
    rows = [[f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
            + [str(int(counts.get(r["rlnOpticsGroup"], 0)))] for _, r in t.optics.iterrows()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in [header] + rows:
        lines.append("    " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
    return lines


def _cs_lines(path: Path) -> list[str]:
    """A cryoSPARC .cs file: rows, field groups, box, pixel size, CTF fields, poses, exposure groups."""
    from cryofire_app.io.cs import read_cs

    lines: list[str] = []
    arr = read_cs(path, allow_empty=True)
    names = arr.dtype.names
    lines.append(_row("Kind", "cryoSPARC .cs"))
    lines.append(_row("Rows", f"{len(arr)}" + ("  (empty file)" if len(arr) == 0 else "")))
    groups = sorted({n.split("/")[0] for n in names if "/" in n})
    lines.append(_row("Field groups", ", ".join(groups)))
    if len(arr):
        if "blob/shape" in names:
            lines.append(_row("Box (.cs)", _fmt_range(arr["blob/shape"][:, 0], " px", "{:.0f}")))
        if "blob/psize_A" in names:
            lines.append(_row("Pixel (.cs)", _fmt_range(arr["blob/psize_A"], " A", "{:.4g}")))
    ctf = [n for n in names if n.startswith("ctf/")]
    lines.append(_row("CTF fields", ", ".join(c[4:] for c in ctf) if ctf else "none"))
    if "alignments3D/pose" in names:
        lines.append(_row("Poses", "3D (alignments3D/pose rotation vectors, alignments3D/shift in px)"))
    elif "alignments2D/pose" in names:
        lines.append(_row("Poses", "2D classification only (alignments2D): no 3D poses"))
    else:
        lines.append(_row("Poses", "none"))
    if "ctf/exp_group_id" in names and len(arr):
        g, c = np.unique(arr["ctf/exp_group_id"], return_counts=True)
        groups = ", ".join(f"group {int(a)}: {int(b)} particles" for a, b in zip(g, c))
        lines.append(_row("Exposure groups", groups))
    return lines


def describe_particles(path: Path, datadir: str | None = None, n_check: int = 64,
                       **overrides: float | None) -> tuple[list[str], int]:
    """Report lines and exit status (2 when the images cannot be used). overrides: apix, kv, cs, w."""
    from cryofire_app.io import check_finite, load_particles

    lines = [f"{path}"]
    lines += _metadata_lines(path)
    try:
        ps = load_particles(path, datadir=datadir, require_even=False, check_finite=False, **overrides)
    except InputError as exc:
        lines.append(_row("Images", f"cannot be opened: {exc}"))
        return lines, 2
    st = ps.images
    if path.suffix.lower() not in (".star", ".cs"):
        kind = "list of image stacks" if path.suffix.lower() == ".txt" else "MRC particle stack"
        lines.append(_row("Kind", kind))
    lines.append(_row("Particles", f"{len(ps)} image(s) from {len(st.files)} file(s)"))
    even = "" if ps.D % 2 == 0 else "  (ODD: training needs an even box; crop or pad by one pixel)"
    lines.append(_row("Box", f"{ps.D} x {ps.D} px{even}"))
    if ps.apix is None:
        lines.append(_row("Pixel size", "unknown (header says 0, no metadata): pass --apix"))
    else:
        src = "MRC header" if path.suffix.lower() not in (".star", ".cs") and ps.ctf is None else "metadata"
        if overrides.get("apix") is not None:
            src = "command line"
        elif any("taken from the MRC header" in n for n in ps.notes):
            src = "MRC header"
        lines.append(_row("Pixel size", f"{ps.apix:.4g} A (from the {src}); box = {ps.D * ps.apix:.1f} A"))
    modes = sorted({h.info.mode for h in st.headers})
    lines.append(_row("Stored as", ", ".join(f"{MODE_NAMES.get(m, '?')} (MRC mode {m})" for m in modes)))
    if ps.ctf is not None:
        c = ps.ctf
        lines.append(_row("CTF", f"defocus U {_fmt_range(c[:, 2], ' A', '{:.0f}')}, "
                                 f"V {_fmt_range(c[:, 3], ' A', '{:.0f}')}; {_fmt_range(c[:, 5], ' kV', '{:g}')}, "
                                 f"Cs {_fmt_range(c[:, 6], ' mm', '{:g}')}, "
                                 f"w {_fmt_range(c[:, 7], '', '{:g}')}, phase {_fmt_range(c[:, 8], ' deg', '{:g}')}"))
    else:
        lines.append(_row("CTF", "none"))
    if ps.rots is not None:
        t = np.abs(ps.trans_px) if ps.trans_px is not None else np.zeros(1)
        lines.append(_row("Poses", f"rotations for all particles; |shift| up to {t.max():.2f} px"))
    else:
        lines.append(_row("Poses", "none (ab initio)"))
    for note in ps.notes:
        lines.append(_row("Note", note))
    status = 0
    if n_check > 0:
        try:
            n = check_finite(st, n_sample=n_check)
            sample = st.read(np.sort(np.random.default_rng(0).choice(len(st), min(n, 16), replace=False)))
            lines.append(_row("Pixel check", f"{n} image(s) checked, all finite; sample mean {sample.mean():.4g}, "
                                             f"std {sample.std():.4g}"))
        except InputError as exc:
            lines.append(_row("Pixel check", f"FAILED: {exc}"))
            status = 2
    return lines, status


def main(args: argparse.Namespace) -> int:
    from cryofire_app.commands import _checks

    path = Path(args.path)
    if not path.exists():
        raise InputError("file not found", path)
    _checks.at_least("--check", args.check, 0, " (images; 0 skips the check)")
    _checks.above("--apix", args.apix, 0, " (Angstrom per pixel)")
    _checks.above("--kv", args.kv, 0, " (kV)")
    _checks.at_least("--cs", args.cs, 0, " (mm)")
    _checks.within("-w/--amp-contrast", args.w, 0, 1)
    io_log = logging.getLogger("cryofire_app.io")
    level = io_log.level
    io_log.setLevel(logging.ERROR)  # the loader's notes are printed in the report instead
    try:
        if _is_map(path, args.kind):
            print("\n".join(describe_map(path)))
            return 0
        lines, status = describe_particles(path, args.datadir, args.check, apix=args.apix, kv=args.kv, cs=args.cs,
                                           w=args.w)
    finally:
        io_log.setLevel(level)
    print("\n".join(lines))
    return status
