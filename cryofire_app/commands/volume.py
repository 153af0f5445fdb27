"""Decode volumes from a trained run at given latent points z or along a principal component of the particles' z.

OUT ending in .mrc: one volume is written there; several become OUT_000.mrc, OUT_001.mrc, ... beside it.
Otherwise OUT is a folder receiving vol_000.mrc, ... and z_values.txt. Maps are real space at the training box, with
its voxel size (Angstrom); --box B resamples them in Fourier space to box B over the same field of view (voxel size
apix * D / B): --box with the stack's box gives maps on the particles' own grid (detail beyond the decoder's band
is zero, not invented).

The hand of an ab initio map is not determined by the data: if a map comes out mirrored (compared with a known
structure, or with secondary-structure handedness at high resolution), --flip-hand writes the mirror images
(z -> -z about the centre voxel; poses that go with them: F R F, F = diag(1, 1, -1), see analysis/hand.py).

examples:
  cryofire volume run1 --z "0,0,0,0,0,0,0,0" -o mean.mrc
  cryofire volume run1 --z "1,0,0,0,0,0,0,0; -1,0,0,0,0,0,0,0" -o two/
  cryofire volume run1 --pc 1 --range -2,2 --n 10 -o pc1/
  cryofire volume run1 --pc 1 --n 10 -o pc1_flipped/ --flip-hand
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="run folder written by `cryofire train`")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--z", help="latent point(s): zdim numbers per point (comma or space separated), points separated "
                               "by ';' -- or a .txt file with one point per row")
    g.add_argument("--pc", type=int, help="walk along this principal component of the particles' z (1-based)")
    p.add_argument("--range", dest="span", default=None,
                   help="LO,HI along --pc, in standard deviations of that PC (default: the particles' 5th to 95th "
                        "percentile)")
    p.add_argument("--range-units", choices=("std", "z"), default="std",
                   help="units of --range: std (standard deviations of the PC, default) or z (raw PC coordinate)")
    p.add_argument("--n", type=int, default=10, help="number of volumes along --pc (default 10)")
    p.add_argument("-o", "--out", required=True, help="output .mrc file or folder")
    p.add_argument("--box", type=int, default=None,
                   help="box of the output maps in pixels, even (default: the training box); e.g. the particle "
                        "stack's box when training ran Fourier-cropped")
    p.add_argument("--flip-hand", action="store_true",
                   help="write the mirrored maps (the other hand; ab initio cannot tell which hand is right)")
    # let `--range -2,2` through: argparse would otherwise read "-2,2" as an option name
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+,\s*-?[\d.]+$")


def _parse_range(text: str | None) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    parts = text.replace(" ", "").split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise InputError(f"--range must be LO,HI (two numbers), got {text!r}") from None
    return lo, hi


def _given_z(args: argparse.Namespace, zdim: int) -> tuple[np.ndarray, list[str]]:
    """--z: the latent points (n, zdim) from the text or a .txt file, and their labels."""
    from cryofire_app.analysis import latent

    if args.span is not None:
        raise InputError("--range goes with --pc, not --z")
    if zdim == 0:
        raise InputError("this run has no latent space (zdim 0): omit --z", args.outdir)
    src = Path(args.z)
    from_file = src.suffix == ".txt" and src.is_file()
    try:
        zs = np.loadtxt(src, ndmin=2).astype(np.float32) if from_file else latent.parse_z_values(args.z, zdim)
    except ValueError as exc:
        raise InputError(f"--z: {exc}", src if from_file else None) from None
    if not np.all(np.isfinite(zs)):
        raise InputError("--z: the latent points must be finite numbers", src if from_file else None)
    if zs.shape[1] != zdim:
        raise InputError(f"--z points have {zs.shape[1]} numbers, the run's z has {zdim}")
    return zs, ["given z"] * len(zs)


def _pc_walk_z(args: argparse.Namespace, run, zdim: int) -> tuple[np.ndarray, list[str]]:
    """--pc: --n points along that principal component of the particles' z (--range in --range-units), and their
    labels (the PC coordinate)."""
    from cryofire_app.analysis import latent

    if zdim == 0:
        raise InputError("this run has no latent space (zdim 0): --pc is meaningless", args.outdir)
    if args.n < 1:
        raise InputError("--n must be at least 1")
    try:
        z = run.z
    except FileNotFoundError as exc:
        raise InputError(f"no latents yet ({exc})", args.outdir) from None
    lp = latent.fit_pca(z)
    if not 1 <= args.pc <= lp.n_components:
        raise InputError(f"--pc {args.pc}: z has principal components 1..{lp.n_components}")
    lo, hi = _parse_range(args.span)
    t, zs = lp.points_along(args.pc, n=args.n, lo=lo, hi=hi, units=args.range_units)
    return zs, [f"PC{args.pc} = {v:.4f}" for v in t]


def _output_paths(out: Path, n: int) -> tuple[list[Path], Path]:
    """The n map paths and the z_values.txt path for OUT (an .mrc file name or a folder); creates the folder."""
    if out.suffix.lower() == ".mrc":
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = [out] if n == 1 else [out.with_name(f"{out.stem}_{i:03d}.mrc") for i in range(n)]
        return paths, out.with_name(f"{out.stem}_z_values.txt")
    out.mkdir(parents=True, exist_ok=True)
    return [out / f"vol_{i:03d}.mrc" for i in range(n)], out / "z_values.txt"


def main(args: argparse.Namespace) -> int:
    import torch

    from cryofire_app.analysis.hand import mirror_volume
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import write_mrc
    from cryofire_app.io.atomic import atomic_write
    from cryofire_app.physics.fft import fourier_resize

    run = Run(args.outdir)
    box = run.D if args.box is None else int(args.box)
    if box < 8 or box % 2:
        raise InputError(f"--box must be an even number >= 8, got {args.box}")
    zdim = int(run.model.zdim)
    zs, labels = _given_z(args, zdim) if args.z is not None else _pc_walk_z(args, run, zdim)
    paths, ztxt = _output_paths(Path(args.out), len(zs))
    apix = float(run.apix) * run.D / box
    for p, zz in zip(paths, zs):
        vol = run.decode(zz[None])[0]
        if box != run.D:
            vol = fourier_resize(torch.from_numpy(np.ascontiguousarray(vol, np.float32)), box, ndim=3).numpy()
        write_mrc(p, mirror_volume(vol) if args.flip_hand else vol, apix=apix)
    hand_note = " (hand flipped)" if args.flip_hand else ""
    atomic_write(ztxt, lambda fh: np.savetxt(fh, zs, fmt="%.6f", header="; ".join(labels) + hand_note))
    print(f"wrote {len(paths)} volume(s){hand_note}, box {box}, {apix:.3f} A/px: " +
          (str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{paths[0].name} .. {paths[-1].name}"))
    print(f"  z values: {ztxt}")
    return 0
