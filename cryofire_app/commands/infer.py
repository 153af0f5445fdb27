"""Inference: poses and z for particles (new or training ones) from a trained run.

Images are preprocessed exactly as in training (Fourier crop to the training box, window, the training
normalization and contrast sign), encoded in batches, and written to PREDDIR/pose.pkl (cryoDRGN format: rot (N,3,3),
trans (N,2) as a fraction of the box), PREDDIR/z.pkl and PREDDIR/latents.npz (index, z, rot, trans in pixels).
The symmetric-loss branch (image or its mirror) is chosen by the decoder's error at a low frequency radius
(--select decoder, default; needs the CTF) or branch 0 is kept (--select encoder: no decoder call at all).

example:  cryofire infer run1 new_particles.star -o run1/pred_new
"""
from __future__ import annotations

import argparse
import sys
import time


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="a cryofire train output folder")
    p.add_argument("particles", help="particles: .mrcs/.mrc, .txt, .star or .cs")
    p.add_argument("--ctf", help="cryoDRGN ctf.pkl when PARTICLES carries no CTF")
    p.add_argument("--datadir", help="folder holding the stacks named in a .star/.cs")
    p.add_argument("-o", "--preddir", required=True, help="output folder for pose.pkl, z.pkl, latents.npz")
    p.add_argument("--batch-size", "-b", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--select", choices=("decoder", "encoder"), default="decoder",
                   help="branch choice: decoder error at --select-radius (default) or encoder only (branch 0)")
    p.add_argument("--select-radius", type=int, default=None,
                   help="frequency radius in pixels for --select decoder (default: the run's select_radius)")
    p.add_argument("--refine-poses", choices=("auto", "search", "local", "no"), default="auto",
                   help="refine the encoder's poses against the seed's map: 'search' starts the seed's last local "
                        "refinement from the encoder's pose and from the best poses of an exhaustive search as the "
                        "seed's (particles the encoder put in a wrong basin recover); 'local' from the encoder's pose "
                        "only (faster); 'no' keeps the encoder's; auto (default): search when the run's seed has a "
                        "map and the particles a CTF")
    p.add_argument("--z-from", choices=("auto", "seed", "encoder"), default="auto",
                   help="z_0..z_{q-1}: the particles' coordinates on the seed's heterogeneity directions at their "
                        "predicted poses (seed; what `cryofire train` writes for its own particles), or the "
                        "encoder's z head alone (encoder); auto (default): seed when the run's seed found "
                        "reproducible heterogeneity")
    p.add_argument("--refine-z", type=int, default=0, metavar="STEPS",
                   help="semi-amortized z: after the encoder, STEPS gradient steps per particle on z alone (decoder "
                        "and poses fixed) of the decoder's fit to the image, kept near the encoder's z by a unit "
                        "Gaussian prior (default 0: the encoder's z)")
    p.add_argument("--turns", type=int, default=None,
                   help="read each pose from this many in-plane turns of the image (default: 8 for runs trained "
                        "with in-plane augmentation, the seeded default, else 1). Grid head: the turns' score maps "
                        "are combined, the same for the mirrored image, and the encoder's own scores pick image or "
                        "mirror (no decoder; --select is ignored); more turns give more precise poses")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers, an unknown device and an output path that is a file, before any work."""
    from pathlib import Path

    from cryofire_app.commands import _checks
    from cryofire_app.io.errors import InputError

    _checks.at_least("--batch-size", args.batch_size, 1, " (images per batch)")
    _checks.at_least("--threads", args.threads, 1)
    _checks.at_least("--select-radius", args.select_radius, 1, " (pixels)")
    _checks.at_least("--turns", args.turns, 1)
    _checks.at_least("--refine-z", args.refine_z, 0)
    _checks.device("--device", args.device)
    if Path(args.preddir).exists() and not Path(args.preddir).is_dir():
        raise InputError("-o/--preddir: exists and is not a folder", args.preddir)


def _particle_data(args: argparse.Namespace, run, ck: dict):
    """(the particles, their ParticleData preprocessed as in training: the checkpoint's box D, window and
    normalisation); warns on stderr when their pixel size (A/px at box D) differs from the run's by over 1 %."""
    from cryofire_app.io import load_particles
    from cryofire_app.io.errors import InputError
    from cryofire_app.training.dataset import ParticleData

    D = int(ck["D"])
    ps = load_particles(args.particles, datadir=args.datadir, ctf=args.ctf)
    try:
        data = ParticleData(ps, D, run.config.window_r_in, run.config.window_r_out)
    except ValueError as exc:
        raise InputError(str(exc), args.particles) from exc
    if abs(data.apix - float(ck["apix"])) > 0.01 * float(ck["apix"]):
        print(f"warning: these particles have {data.apix:.4g} A/px at box {D}, the run was trained at "
              f"{float(ck['apix']):.4g} A/px: poses and z will be unreliable", file=sys.stderr)
    data.prep.sigma_real = float(ck["sigma_real"])
    data.prep.sigma_ht = float(ck["sigma_ht"])
    return ps, data


def _read_seed(args: argparse.Namespace, run, data) -> dict:
    """The run's seed.npz arrays ({} when it has none, or these particles lack the CTF the seed's map needs)."""
    import numpy as np

    from cryofire_app.io.rundir import RunDir

    path = RunDir(args.outdir).seed
    if not path.is_file() or (data.ctf is None and run.config.ctf is not None):
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _refine_poses(args: argparse.Namespace, seed: dict, run, data, pr) -> bool:
    """Refine ``pr``'s poses against the seed's map (--refine-poses); True when done."""
    from cryofire_app.io.errors import InputError
    from cryofire_app.training.seeding import refine_with_seed

    if args.refine_poses == "no":
        return False
    out = refine_with_seed(seed, data.resized_images, data.N, data.ctf.numpy() if data.ctf is not None else None,
                           pr.rot, pr.trans, run.config.seeded.seed_config,
                           search=args.refine_poses != "local") if seed else None
    if out is None:
        if args.refine_poses in ("search", "local"):
            raise InputError(f"--refine-poses {args.refine_poses}: the run has no seed map to refine against (an "
                             "amortized run, a run from before it was saved, or no CTF for these particles)",
                             args.outdir)
        return False
    pr.rot, pr.trans = out
    return True


def _seed_z(args: argparse.Namespace, seed: dict, run, data, pr) -> bool:
    """Replace z_0..z_{q-1} of ``pr`` by the coordinates on the run's seed basis (--z-from); True when done."""
    from cryofire_app.io.errors import InputError
    from cryofire_app.io.rundir import RunDir
    from cryofire_app.training.seeding import basis_z

    if args.z_from == "encoder":
        return False
    path = RunDir(args.outdir).seed
    zb = basis_z(seed, run.config.zdim, data.resized_images, data.N,
                 data.ctf.numpy() if data.ctf is not None else None, pr.rot, pr.trans) if seed else None
    if zb is None:
        if args.z_from == "seed":
            raise InputError("--z-from seed: the run's seed has no heterogeneity directions (none reproduced, an "
                             "amortized run, a run from before they were saved, or no CTF for these particles)",
                             path)
        return False
    pr.z[:, : zb[0].shape[1]] = zb[0]
    if zb[1] is not None:
        pr.state = zb[1]
    return True


def _write_predictions(out, pr, ps, data, D: int) -> None:
    """PREDDIR/pose.pkl (trans as a fraction of the box D), z.pkl and latents.npz (trans in pixels; ``state``: the
    states under the seed's mixture, when it has one)."""
    import numpy as np

    from cryofire_app.io import write_pose_pkl, write_z_pkl
    from cryofire_app.io.atomic import atomic_save_npz
    from cryofire_app.io.rundir import RunDir

    out.mkdir(parents=True, exist_ok=True)
    files = RunDir(out)
    write_pose_pkl(files.pose, pr.rot.astype(np.float32), (pr.trans / D).astype(np.float32))
    write_z_pkl(files.z, pr.z.astype(np.float32))
    atomic_save_npz(files.latents, index=np.asarray(ps.index, np.int64), z=pr.z.astype(np.float32),
                    rot=pr.rot.astype(np.float32), trans=pr.trans.astype(np.float32),
                    branch=pr.branch.astype(np.int8), D=np.int64(D), apix=np.float64(data.apix),
                    **({"state": pr.state.astype(np.int64)} if pr.state is not None else {}))


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from cryofire_app.analysis.run import Run
    from cryofire_app.io.errors import InputError
    from cryofire_app.training.build import resolve_device
    from cryofire_app.training.inference import default_turns, predict, refine_z

    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args.outdir)
    ck = run.checkpoint
    D = int(ck["D"])
    ps, data = _particle_data(args, run, ck)
    select = args.select
    if select == "decoder" and data.ctf is None and run.config.ctf is not None:
        print("warning: no CTF for these particles; keeping branch 0 (--select encoder)", file=sys.stderr)
        select = "encoder"
    device = resolve_device(args.device)
    model = run.model.to(device)
    radius = min(args.select_radius or run.config.select_radius, int(ck["mask_radius"]))
    t0 = time.time()
    turns = args.turns if args.turns is not None else default_turns(run.config)
    if turns < 1:
        raise InputError(f"--turns must be >= 1, got {turns}")
    pr = predict(model, data, np.arange(data.N), sign=float(ck["data_sign"]), radius=radius, select=select,
                 batch=args.batch_size, device=device, use_z=ck["phase"] not in ("pose_only", "seed"),
                 sym=run.config.amortized.sym_loss, turns=turns)
    seed = _read_seed(args, run, data)
    refined = _refine_poses(args, seed, run, data, pr)
    from_seed = _seed_z(args, seed, run, data, pr)
    if args.refine_z > 0:
        if data.ctf is None and run.config.ctf is not None:
            raise InputError("--refine-z needs the particles' CTF (give --ctf)", args.particles)
        pr.z = refine_z(model, data, pr, args.refine_z, sign=float(ck["data_sign"]), radius=int(ck["mask_radius"]),
                        batch=args.batch_size, device=device)
    dt = time.time() - t0
    out = Path(args.preddir)
    _write_predictions(out, pr, ps, data, D)
    print(f"inferred {data.N} particles in {dt:.2f} s ({1e3 * dt / max(data.N, 1):.2f} ms/image; poses "
          f"{'refined on the seed map' if refined else 'from the encoder'}, z from the "
          f"{'seed basis' if from_seed else 'encoder'}); wrote {out}", file=sys.stderr)
    return 0
