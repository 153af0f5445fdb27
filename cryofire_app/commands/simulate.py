"""Simulate a cryo-EM particle stack from one or more maps (ground truth for testing reconstruction).

Each map is one conformational state; particles are drawn with --fractions. Alternatively one map plus --hinge K
(or --hinge-continuous) makes states by rotating a masked sub-region rigidly about a hinge axis.
Poses are uniform on SO(3) (or taken from --from-metadata), defocus is drawn per particle, shifts are uniform in
[-max-shift, max-shift] pixels, and white Gaussian noise is added at the requested SNR
(SNR = variance of the clean images over the whole box / noise variance).

Image convention: the same as RELION's `relion_project --ctf` (tested against it): image = iFT(CTF_RELION x
projection) with CTF_RELION(0) = +w, so positive density is WHITE, like RELION-extracted (contrast-inverted)
particles. A particle with rlnOriginX/YAngst = +t*apix sits at -t pixels from the box centre.
cryoDRGN-convention trainers (CTF(0) = -w) should invert these images (cryoDRGN: --invert-data).

Writes into DIR: particles.mrcs, particles.star (RELION 3.1), ctf.pkl, poses.pkl (cryoDRGN conventions),
labels.npy (state per image), labels_continuous.npy (hinge runs), gt_state_K.mrc (ground-truth maps at the
output box and pixel size), settings.json.

examples:
  cryofire simulate state0.mrc state1.mrc -o sim -n 50000 -D 128 --snr 0.1 --fractions 0.3,0.7 --max-shift 4
  cryofire simulate ribosome.mrc --apix 5 -o hinge -n 20000 -D 64 --hinge 5 --hinge-angle 25
  cryofire simulate map.mrc -o like_real -D 128 --from-metadata particles.star
"""
from __future__ import annotations

import argparse
import logging
import math

from cryofire_app.io.errors import InputError

log = logging.getLogger(__name__)


def _floats(text: str, n: int | None, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise InputError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    return vals


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("maps", nargs="+", metavar="MAP", help="input map(s) (.mrc); one per state")
    parser.add_argument("-o", "--outdir", required=True, metavar="DIR", help="output folder")
    parser.add_argument("-n", type=int, metavar="N",
                        help="number of images (required unless --from-metadata, which defaults to all its rows)")
    parser.add_argument("-D", "--box", type=int, metavar="BOX",
                        help="output box in pixels, even (default: the map box); maps are Fourier-cropped/padded")
    parser.add_argument("--apix", type=float, metavar="A",
                        help="voxel size of the input map(s) in Angstrom (overrides the header; needed when it is 0)")
    parser.add_argument("--snr", type=float, default=0.1, metavar="S",
                        help="signal variance / noise variance (default 0.1; 'inf' for noise-free images)")
    parser.add_argument("--fractions", metavar="F1,F2,...", help="fraction of particles per state (default equal)")
    parser.add_argument("--defocus", default="1.0,2.5", metavar="MIN,MAX", help="defocus range in um (default 1.0,2.5)")
    parser.add_argument("--defocus-dist", choices=("uniform", "lognormal"), default="uniform",
                        help="defocus distribution (lognormal: median at the geometric mean, clipped to the range)")
    parser.add_argument("--astigmatism", type=float, default=200.0, metavar="A",
                        help="maximum |dfU - dfV| in Angstrom (default 200)")
    parser.add_argument("--kv", type=float, default=300.0, help="voltage in kV (default 300)")
    parser.add_argument("--cs", type=float, default=2.7, help="spherical aberration in mm (default 2.7)")
    parser.add_argument("--amp-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)")
    parser.add_argument("--bfactor", type=float, default=0.0, help="CTF B-factor envelope in A^2 (default 0)")
    parser.add_argument("--max-shift", type=float, default=0.0, metavar="PX",
                        help="maximum particle offset in pixels along each axis (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); output is identical per seed")
    hinge = parser.add_argument_group("conformational states from one map (rigid-body hinge motion)")
    hinge.add_argument("--hinge", type=int, default=0, metavar="K",
                       help="K >= 2 discrete states at angles 0..--hinge-angle (with --hinge-continuous: K label bins, "
                            "default 5)")
    hinge.add_argument("--hinge-continuous", action="store_true",
                       help="each particle gets its own angle, uniform in [0, --hinge-angle]")
    hinge.add_argument("--hinge-angle", type=float, default=20.0, metavar="DEG", help="largest angle (default 20)")
    hinge.add_argument("--hinge-mask", metavar="MASK.mrc",
                       help="mask of the moving region (0..1, same grid as the map); default: the part of the map "
                            "beyond a plane normal to --hinge-arm holding --hinge-fraction of the density")
    hinge.add_argument("--hinge-axis", default="0,0,1", metavar="X,Y,Z", help="hinge axis direction (default 0,0,1)")
    hinge.add_argument("--hinge-arm", default="1,0,0", metavar="X,Y,Z",
                       help="direction towards the moving region for the automatic mask (default 1,0,0)")
    hinge.add_argument("--hinge-fraction", type=float, default=0.3, metavar="F",
                       help="fraction of the density that moves with the automatic mask (default 0.3)")
    hinge.add_argument("--hinge-pivot", metavar="X,Y,Z",
                       help="a point on the hinge axis in voxels from the box centre (default: on the cut plane)")
    parser.add_argument("--from-metadata", metavar="STAR|CS",
                        help="use the poses and CTFs a real dataset lists (RELION .star or cryoSPARC .cs); the "
                             "output pixel size is its pixel size rescaled to -D")
    parser.add_argument("--chunk", type=int, default=500, help="images per chunk written to disk (default 500)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing simulation in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from cryofire_app.simulate import HingeConfig, SimulationConfig

    dmin, dmax = _floats(args.defocus, 2, "--defocus")
    if not 0 <= dmin <= dmax or (args.defocus_dist == "lognormal" and dmin <= 0):
        raise InputError(f"--defocus: need 0 <= MIN <= MAX (MIN > 0 for lognormal), got {args.defocus}")
    if args.n is None and not args.from_metadata:
        raise InputError("give the number of images with -n")
    if args.n is not None and args.n < 1:
        raise InputError(f"-n must be positive, got {args.n}")
    if not (args.snr > 0 or math.isinf(args.snr)):
        raise InputError(f"--snr must be positive, got {args.snr}")
    from cryofire_app.commands import _checks

    _checks.even_box("-D/--box", args.box)
    _checks.above("--apix", args.apix, 0, " (Angstrom per voxel)")
    _checks.above("--kv", args.kv, 0, " (kV)")
    _checks.at_least("--cs", args.cs, 0, " (mm)")
    _checks.within("--amp-contrast", args.amp_contrast, 0, 1)
    _checks.at_least("--bfactor", args.bfactor, 0, " (A^2)")
    _checks.at_least("--max-shift", args.max_shift, 0, " (pixels)")
    _checks.at_least("--astigmatism", args.astigmatism, 0, " (Angstrom)")
    _checks.at_least("--chunk", args.chunk, 1, " (images)")
    _checks.within("--hinge-angle", args.hinge_angle, -180, 180, " (degrees)")
    hinge = HingeConfig(steps=args.hinge, continuous=args.hinge_continuous, angle_deg=args.hinge_angle,
                        mask=args.hinge_mask, axis=tuple(_floats(args.hinge_axis, 3, "--hinge-axis")),
                        arm=tuple(_floats(args.hinge_arm, 3, "--hinge-arm")), fraction=args.hinge_fraction,
                        pivot=tuple(_floats(args.hinge_pivot, 3, "--hinge-pivot")) if args.hinge_pivot else None)
    if args.hinge == 1 or args.hinge < 0:
        raise InputError("--hinge needs K >= 2 states")
    if not 0 < args.hinge_fraction < 1:
        raise InputError("--hinge-fraction must be in (0, 1)")
    return SimulationConfig(
        outdir=args.outdir, n=args.n, maps=list(args.maps), box=args.box, apix=args.apix, snr=args.snr,
        fractions=_floats(args.fractions, None, "--fractions") if args.fractions else None,
        defocus_um=(dmin, dmax), defocus_dist=args.defocus_dist, astigmatism_A=args.astigmatism, kv=args.kv,
        cs_mm=args.cs, amp_contrast=args.amp_contrast, bfactor=args.bfactor, max_shift_px=args.max_shift,
        seed=args.seed, hinge=hinge, from_metadata=args.from_metadata, chunk=args.chunk,
        progress=not args.no_progress, overwrite=args.overwrite)


def main(args: argparse.Namespace) -> int:
    from cryofire_app.simulate import simulate

    res = simulate(config_from_args(args))
    print(f"wrote {res.n} images of {res.D} px at {res.apix:.4f} A/px ({res.n_states} states) to {res.outdir} "
          f"in {res.seconds:.1f} s; noise sd {res.noise_std:.4g}")
    return 0
