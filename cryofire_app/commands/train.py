"""Train the cryoFIRE encoder and decoder on a particle stack (ab initio heterogeneous reconstruction).

Writes OUTDIR/config.json, log.jsonl (one JSON event per line), checkpoints/last.pt (+ numbered copies), and at the
end of a final eval-mode pass pose.pkl (cryoDRGN: rot (N,3,3) with k_vol = k_img @ rot, trans (N,2) as a fraction of
the box), z.pkl (N, zdim) and latents.npz. CTF comes from the STAR/.cs when present, else from --ctf.
Ctrl-C writes a checkpoint; continue with --resume.

example:  cryofire train particles.mrcs --ctf ctf.pkl -o run1 --num-images 200000 -D 64
"""
from __future__ import annotations

import argparse
import sys

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir


def add_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    _add_schedule_args(p)
    _add_run_args(p)
    _add_network_args(p)
    _add_seed_and_encoder_args(p)
    _add_compute_args(p)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """The particles, their CTF, the output folder, the training box, z and the run's length."""
    p.add_argument("particles", help="particle stack: .mrcs/.mrc, .txt (one stack per line), .star or .cs")
    p.add_argument("--ctf", help="cryoDRGN ctf.pkl (N x 9) when PARTICLES carries no CTF")
    p.add_argument("--datadir", help="folder holding the stacks named in a .star/.cs")
    p.add_argument("-o", "--outdir", required=True, help="output folder")
    p.add_argument("-D", "--box", type=int, default=None,
                   help="training box in pixels (even; images are Fourier-cropped on the fly; default: the stack's)")
    p.add_argument("--zdim", type=int, default=8, help="dimension of the conformation latent z (default 8)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-images", type=int, help="total number of images to train on (default: 20 epochs)")
    g.add_argument("--epochs", type=float, help="training length in passes over the training split")


def _add_schedule_args(p: argparse.ArgumentParser) -> None:
    """The training schedule and its phases' knobs, batch size and learning rate."""
    p.add_argument("--schedule", choices=("seeded", "amortized"), default="seeded",
                   help="seeded (default): an explicit ab initio pose search and state classification on the "
                        "training split first (cryofire_app.reconstruct, minutes on a CPU), then the encoder is "
                        "distilled on those poses and everything is fine-tuned amortized; on CPU the frequency "
                        "radius is capped at 12 px unless --freq-max is given. amortized: the paper's pure cryoFIRE "
                        "schedule (pose-only phase, frequency marching, symmetric loss; hours on a CPU)")
    p.add_argument("--distill-fraction", type=float, default=0.85,
                   help="seeded: fraction of the image budget spent distilling the seeded poses into the encoder "
                        "before joint amortized training (default 0.85)")
    p.add_argument("--grid-width", type=float, default=0.5,
                   help="seeded, grid head: final width of the distill target in view spacings (1 = no narrowing; "
                        "default 0.5, reached at 3/4 of the distill phase)")
    p.add_argument("--synth-ratio", type=float, default=0.5,
                   help="seeded: synthetic images of the seed's map (known poses, the data's CTFs, shifts and noise) "
                        "added to the encoder's pose rows per real image in the distill phase; 0 = real only "
                        "(default 0.5)")
    p.add_argument("--batch-size", "-b", type=int, default=32, help="global batch size in images (default 32)")
    p.add_argument("--pose-only-images", type=int, default=100_000,
                   help="amortized: images of the pose-only phase (z ignored, sampled) before joint training "
                        "(default 100000)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 1e-4 for --schedule amortized as in cryoFIRE, 1e-3 for seeded, "
                        "whose joint phase runs at a tenth of it)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (default, as in cryoFIRE) or cosine: 5%% warm-up then cosine decay over the run")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Seed, device, resuming and checkpoints, the frequency mask (pixels), the data's sign and the validation
    split."""
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUTDIR from checkpoints/last.pt")
    p.add_argument("--checkpoint-every", type=int, default=20_000, help="images between checkpoints (default 20000)")
    p.add_argument("--keep-checkpoints", type=int, default=3,
                   help="numbered checkpoints kept besides last.pt, oldest deleted first (default 3)")
    p.add_argument("--freq-start", type=int, default=4,
                   help="amortized: initial frequency-mask radius in pixels (default 4)")
    p.add_argument("--freq-add-every", type=int, default=10_000,
                   help="amortized: images per +1 pixel of the frequency-mask radius (default 10000)")
    p.add_argument("--freq-max", type=int, default=None,
                   help="largest mask radius in pixels (default D/2; seeded on CPU: 12, the fixed radius of its "
                        "distill/joint phases)")
    p.add_argument("--invert-data", choices=("auto", "yes", "no"), default="auto",
                   help="multiply the images by -1: auto (when the consensus density comes out negative, checked "
                        "early and logged), yes, no (default auto)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of particles held out for the validation loss (at most 256; default 0.05)")


def _add_network_args(p: argparse.ArgumentParser) -> None:
    """Encoder and decoder architecture."""
    p.add_argument("--enc-channels", type=str, default=None,
                   help="encoder conv block widths, comma separated (default 16,32,64,128,128)")
    p.add_argument("--dec-hidden", type=int, default=None, help="decoder MLP width (default 256)")
    p.add_argument("--dec-layers", type=int, default=None, help="decoder residual blocks (default 3)")
    p.add_argument("--pe-dim", type=int, default=None, help="random Fourier features of the decoder (default 64)")
    p.add_argument("--dec-arch", choices=("mlp", "grid"), default=None,
                   help="decoder: mlp (the original: Fourier features + residual MLP) or grid (a learnable "
                        "feature volume sampled at each lattice point + a 32-wide MLP, each (k, -k) pair evaluated "
                        "once; the default, much cheaper per image: docs/decisions/008-fast-architecture.md)")
    p.add_argument("--enc-stem", choices=("conv", "unshuffle"), default=None,
                   help="encoder stem: conv (the original) or unshuffle (lossless 2x2 pixel_unshuffle before "
                        "the first block: ~5x fewer encoder FLOPs at box 64)")


def _add_seed_and_encoder_args(p: argparse.ArgumentParser) -> None:
    """The ab initio seed (reuse, states, subset); the encoder's input box, rotation head, view encoder and
    augmentation; the --fast preset."""
    p.add_argument("--seed-from", default=None, metavar="RUN",
                   help="seeded: reuse the seed (pose search + states) of an earlier run on the same particles, "
                        "--seed and --val-fraction (its folder or checkpoints/seed.npz) instead of searching again")
    p.add_argument("--states", type=int, default=None, metavar="K",
                   help="seeded: the number of discrete states the seed classifies into (default: chosen from the "
                        "data, which may find a continuum or none; 1: no heterogeneity step)")
    p.add_argument("--seed-particles", type=int, default=None, metavar="N",
                   help="seeded: the ab initio seed searches at most N random training particles (default 20000; 0: "
                        "all); the distilled encoder gives the others their poses and z")
    p.add_argument("--refine-others", choices=("search", "local", "no"), default="search",
                   help="seeded: the particles the seed did not search (held-out, and past --seed-particles) get the "
                        "encoder's poses refined against the seed's map, as `cryofire infer --refine-poses`: "
                        "'search' (default) also tries the best poses of an exhaustive search, 'local' refines "
                        "from the encoder's pose only (faster), 'no' keeps the encoder's")
    p.add_argument("--enc-box", default=None,
                   help="encoder input box: the image is Fourier-cropped to this even size before the CNN, or 'full' "
                        "(default 32: as accurate per image as 64 at a third of the cost)")
    p.add_argument("--enc-norm", choices=("group", "batch"), default=None,
                   help="encoder normalisation after each conv block (default group)")
    p.add_argument("--rot-head", choices=("auto", "grid", "r6"), default="auto",
                   help="encoder rotation head: grid (scores over a 512 x 24 rotation grid, learnt by cross-entropy "
                        "on the seed's poses: far fewer images to the same accuracy) or r6 (the "
                        "original 6D regression); auto = grid for --schedule seeded, r6 for amortized")
    p.add_argument("--view-dirs", type=int, default=None, metavar="N",
                   help="seeded schedule, grid head: a view encoder of N directions that reads each image turned "
                        "and re-centred at the encoder's pose, refining the view of new particles at inference "
                        "(default 1024); 0: none")
    p.add_argument("--augment", choices=("auto", "yes", "no"), default="auto",
                   help="in-plane rotation augmentation of the encoder's input with the matching pose change (auto: "
                        "on for --schedule seeded, off for amortized; never with the symmetric loss). Without it the "
                        "encoder memorises the training images and new images get poor poses")
    p.add_argument("--fast", action="store_true",
                   help="the fast preset: --dec-arch grid --enc-stem unshuffle (now the default; kept so older "
                        "command lines still work)")


def _add_compute_args(p: argparse.ArgumentParser) -> None:
    """Precision, memory layout and compilation, the variational/symmetric loss, threads and the progress bar."""
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision of the networks (fp16 needs CUDA; physics and loss stay fp32; default "
                        "fp32)")
    p.add_argument("--channels-last", choices=("auto", "yes", "no"), default="auto",
                   help="NHWC encoder convolutions: auto = on with CUDA only (default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (worth it on a GPU; slow start)")
    p.add_argument("--variational", action="store_true", help="variational z (KL weight --beta)")
    p.add_argument("--beta", type=float, default=0.0, help="KL weight for --variational (default 0)")
    p.add_argument("--no-sym-loss", action="store_true",
                   help="amortized: disable the symmetric (mirror) loss (the seeded schedule trains without it: its "
                        "seeded poses are unmirrored)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of the command line, validated, with the input paths checked (InputError otherwise)."""
    from cryofire_app.training.config import TrainConfig

    if args.box is not None and (args.box < 8 or args.box % 2):
        raise InputError(f"-D/--box must be an even number >= 8, got {args.box}")
    cfg = TrainConfig.of(particles=str(args.particles), outdir=str(args.outdir), ctf=args.ctf, datadir=args.datadir,
                         D=args.box, zdim=args.zdim, num_images=args.num_images, epochs=args.epochs,
                         batch_size=args.batch_size, schedule=args.schedule,
                         distill_fraction=args.distill_fraction, distill_grid_width=args.grid_width,
                         distill_synth_ratio=args.synth_ratio, lr=args.lr,
                         lr_schedule=args.lr_schedule, seed=args.seed, device=args.device,
                         pose_only_images=args.pose_only_images, beta=args.beta, sym_loss=not args.no_sym_loss,
                         freq_start=args.freq_start, freq_add_every=args.freq_add_every, freq_max=args.freq_max,
                         invert_data=args.invert_data, val_fraction=args.val_fraction,
                         checkpoint_every=args.checkpoint_every, num_threads=args.threads,
                         keep_checkpoints=args.keep_checkpoints)
    _apply_network_args(cfg, args)
    _apply_training_args(cfg, args)
    cfg.validate()
    _check_paths(args)
    return cfg


def _apply_network_args(cfg, args: argparse.Namespace) -> None:
    """The encoder/decoder options onto cfg.encoder / cfg.decoder (InputError for a malformed one)."""
    if args.enc_channels:
        try:
            cfg.encoder.channels = tuple(int(c) for c in args.enc_channels.split(","))
        except ValueError as exc:
            raise InputError(f"--enc-channels must be integers separated by commas, got {args.enc_channels!r}") from exc
    cfg.encoder.variational = bool(args.variational)
    if args.dec_hidden:
        cfg.decoder.hidden = args.dec_hidden
    if args.dec_layers is not None:
        cfg.decoder.layers = args.dec_layers
    if args.pe_dim:
        cfg.decoder.pe_dim = args.pe_dim
    if args.fast:
        cfg.decoder.arch, cfg.encoder.stem = "grid", "unshuffle"
    if args.dec_arch:
        cfg.decoder.arch = args.dec_arch
    if args.enc_stem:
        cfg.encoder.stem = args.enc_stem
    if args.enc_box is not None:
        full = str(args.enc_box).lower() == "full"
        box = None if full else (int(args.enc_box) if str(args.enc_box).isdigit() else 0)
        if not full and (box < 8 or box % 2):
            raise InputError(f"--enc-box must be an even number >= 8 or 'full', got {args.enc_box!r}")
        cfg.encoder.box = box
    if args.enc_norm:
        cfg.encoder.norm = args.enc_norm
    if args.view_dirs is not None:
        if args.view_dirs != 0 and args.view_dirs < 12:
            raise InputError(f"--view-dirs must be 0 (no view encoder) or >= 12, got {args.view_dirs}")
        cfg.encoder.view_dirs = args.view_dirs
    cfg.encoder.rot_head = None if args.rot_head == "auto" else args.rot_head


def _apply_training_args(cfg, args: argparse.Namespace) -> None:
    """Augmentation, the seed's options and the numerics (precision, channels-last, compile) onto cfg."""
    cfg.augment_inplane = {"auto": None, "yes": True, "no": False}[args.augment]
    cfg.seeded.seed_from = args.seed_from
    if args.seed_particles is not None:
        cfg.seeded.seed_max_particles = int(args.seed_particles)
    cfg.seeded.refine_others = args.refine_others
    if args.states is not None:
        if args.states < 1:
            raise InputError(f"--states must be >= 1 (leave it out to let the data choose), got {args.states}")
        cfg.seeded.seed_config = dict(cfg.seeded.seed_config, n_states=int(args.states))
    if args.precision == "fp16" and args.device == "cpu":
        raise InputError("--precision fp16 needs a CUDA device (use bf16 on the CPU)")
    cfg.precision = args.precision
    cfg.channels_last = {"auto": None, "yes": True, "no": False}[args.channels_last]
    cfg.compile = bool(args.compile)


def _check_paths(args: argparse.Namespace) -> None:
    """Input files exist and an output folder is not a file; a --seed-from seed is a readable archive. Before any
    work, so a typo costs nothing (the files' contents are checked when they are opened)."""
    import zipfile
    from pathlib import Path

    for flag, value in (("PARTICLES", args.particles), ("--ctf", args.ctf)):
        if value is not None and not Path(value).is_file():
            raise InputError(f"{flag}: file not found" if not Path(value).exists() else f"{flag}: not a file", value)
    if args.datadir is not None and not Path(args.datadir).is_dir():
        raise InputError("--datadir: not a folder", args.datadir)
    out = Path(args.outdir)
    if out.exists() and not out.is_dir():
        raise InputError("-o/--outdir: exists and is not a folder", out)
    if args.seed_from:
        seed = Path(args.seed_from)
        seed = RunDir(seed).seed if seed.is_dir() else seed
        if not seed.is_file():
            raise InputError("--seed-from: no seed here (give a run folder or its checkpoints/seed.npz)", seed)
        try:
            with zipfile.ZipFile(seed) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"--seed-from: unreadable seed archive, truncated or damaged ({exc})", seed) from None
        if bad is not None:
            raise InputError(f"--seed-from: damaged seed archive (member {bad} fails its checksum)", seed)


def main(args: argparse.Namespace) -> int:

    from tqdm import tqdm

    from cryofire_app.commands.console import event_line
    from cryofire_app.training.events import Failed, Finished, Started, Step
    from cryofire_app.training.trainer import Trainer

    cfg = config_from_args(args)
    last = RunDir(cfg.outdir).last_checkpoint
    if last.exists() and not args.resume:
        raise InputError("already holds a training run; use --resume to continue it or choose another -o",
                         cfg.outdir)
    trainer = Trainer(cfg, resume=args.resume)
    bar = None
    try:
        for ev in trainer.run():
            if isinstance(ev, Started):
                if not args.quiet:
                    bar = tqdm(total=trainer.images_total, initial=trainer.images_seen, unit="img", dynamic_ncols=True)
                print(f"training on {ev.n_train} particles ({ev.n_val} held out), box {trainer.D}, "
                      f"device {trainer.device}", file=sys.stderr)
            elif isinstance(ev, Step) and ev.phase == "seed":
                if bar is not None:   # no training images yet: show the seeding progress on the bar
                    bar.set_description(f"seed step {ev.step}", refresh=False)
                    bar.set_postfix(sigma2=f"{ev.loss:.4g}", r=ev.mask_radius, phase="seed")
            elif isinstance(ev, Step):
                if bar is not None:
                    if bar.desc:
                        bar.set_description("", refresh=False)
                    bar.update(ev.images_seen - bar.n)
                    if ev.step % 10 == 0:
                        bar.set_postfix(loss=f"{ev.loss:.4g}", r=ev.mask_radius, phase=ev.phase, refresh=False)
            elif (line := event_line(ev)) is not None:   # messages, phases, seed stages, checkpoints, the verdict
                (bar.write if bar else print)(line)
            elif isinstance(ev, Failed):
                if bar:
                    bar.close()
                print(f"cryofire train: failed: {ev.message}", file=sys.stderr)
                return 1
            elif isinstance(ev, Finished):
                if bar:
                    bar.close()
                print(f"finished after {ev.images_seen} images{' (stopped)' if ev.stopped else ''}; "
                      f"results in {ev.outdir}", file=sys.stderr)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        if trainer.model is not None and getattr(trainer, "rank", 0) == 0:
            p = trainer.save_checkpoint(numbered=False)
            print(f"checkpoint written to {p}; continue with --resume", file=sys.stderr)
        raise
    return 0
