"""Run the whole pipeline headless on the bundled 70S ribosome map (no display, no download).

1. simulate a small two-state set (a 20-degree hinge motion of part of the map; 2 states, CTF, small shifts, noise)
2. train cryoFIRE on it for a fixed budget of images or wall-clock minutes (whichever ends first)
3. analyze: PCA/k-means of z, volumes at the 2 cluster centres and along PC1, plots
4. evaluate against the simulation's ground truth (pose errors, state confusion, FSC) -> eval.json
and print where everything is. Open the maps in ChimeraX/napari next to data/gt_state_0.mrc and gt_state_1.mrc.

example:  cryofire demo -o demo_out            (a few minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cryofire_app.io.errors import InputError


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder (created; must not hold an earlier demo run)")
    # defaults measured here (2 CPU cores): box 64 / 3,000 images gave 3.1 deg median view error and 2.3 % state
    # confusion in 312 s, where box 32 / 2,000 images stayed at 26 deg and 48 % (too few pixels for the seed search)
    p.add_argument("--n", type=int, default=3000, help="simulated particles (default 3000)")
    p.add_argument("--box", type=int, default=64, help="image box in pixels (even; default 64)")
    p.add_argument("--snr", type=float, default=1.0, help="signal-to-noise ratio of the images (default 1.0)")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget for training (default 5)")
    p.add_argument("--num-images", type=int, default=200_000,
                   help="training budget in images, if reached before --minutes (default 200000)")
    p.add_argument("--pose-only-fraction", type=float, default=0.4,
                   help="fraction of the budget spent in the pose-only phase before z is used (default 0.4)")
    p.add_argument("--zdim", type=int, default=2, help="latent dimension (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--schedule", default=None,
                   help="training schedule passed to the trainer (e.g. amortized = the paper's pure cryoFIRE loop; "
                        "default: the trainer's default)")


def _images_per_second(particles: str, folder: Path, args: argparse.Namespace) -> float:
    """Training throughput on this machine: a few steps of a throw-away run (its folder is removed)."""
    import shutil

    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.events import Step
    from cryofire_app.training.trainer import Trainer

    cfg = TrainConfig(particles=particles, outdir=str(folder), zdim=args.zdim, num_images=32 * 12, batch_size=32,
                      seed=args.seed, device="cpu", pose_only_images=32 * 6, num_threads=args.threads,
                      checkpoint_every=10 ** 9, latents_every=10 ** 9, invert_data="yes",
                      freq_start=max(4, 3 * args.box // 8))  # cost grows with the radius: plan for the upper part
    import dataclasses

    if "schedule" in {f.name for f in dataclasses.fields(TrainConfig)}:
        cfg.schedule = "amortized"  # time plain gradient steps only, without a seeding stage
    steps = []
    try:
        tr = Trainer(cfg)
        gen = tr.run()
        for ev in gen:
            # only gradient steps on images count (a seeding stage may report steps with images_seen 0)
            if isinstance(ev, Step) and ev.images_seen > 0 and (not steps or ev.images_seen > steps[-1][0]):
                steps.append((ev.images_seen, ev.elapsed_s))
                if len(steps) >= 10:
                    break
        gen.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if len(steps) < 4:
        raise RuntimeError("could not time the training steps (fewer than 4 steps ran)")
    (i0, t0), (i1, t1) = steps[2], steps[-1]
    return max((i1 - i0) / max(t1 - t0, 1e-6), 1e-3)


def seeded_demo_settings(cfg, args: argparse.Namespace) -> None:
    """The seeded schedule at demo size (measured on 2 shared CPU cores, see tests/test_train_seeded.py): a light seed
    (two starts, 12 rounds on <= 1000 particles at box 16, local refinement up to the demo box; ~1 min for the default
    2000 images; 10-25 deg median view error at SNR 1, where one start and 8 rounds end at 54 deg), a narrow CNN that
    distils in ~600 steps of 32 (lr 1e-3), a 3x128 decoder at radius <= 12 px (~6x cheaper per image than 3x256),
    and 40 passes over the particles, most of them distilling (measured: default demo 206 s on one thread, encoder
    poses 26.5 deg = the seed's 24 deg on the training split, 51 deg held out; 12 passes left the encoder at 79 deg)."""
    box = args.box
    cfg.seed_config = dict(box_global=16, radius_global=[4.0, 5.0], n_subset=2000, n_restarts=2, iters_global=12,
                           max_shift_px=2.0, box_search=16, iters_search=2,
                           boxes_local=sorted({min(b, box) for b in (16, 24, box)}), iters_local=1,
                           box_hetero=min(32, box), iters_hetero=8, iters_als=8, seed=args.seed)
    cfg.encoder.channels, cfg.encoder.hidden = (8, 16, 32, 64), 256
    cfg.decoder.hidden = 128
    cfg.freq_max = min(12, box // 2)
    cfg.lr = 1e-3
    cfg.distill_fraction = 0.85
    cfg.num_images = int(min(args.num_images, 40 * args.n))
    cfg.checkpoint_every = max(1000, cfg.num_images // 4)


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from cryofire_app.analysis.evaluate import load_gt_maps, predictions_from_run, evaluate, table_row, write_json
    from cryofire_app.analysis.run import Run
    from cryofire_app.commands.analyze import analyze
    from cryofire_app.io import read_pose_pkl
    from cryofire_app.simulate import demo_config, simulate
    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.events import Checkpoint, Failed, Finished, Message, Started, Step
    from cryofire_app.training.trainer import Trainer

    if args.box < 16 or args.box % 2:
        raise InputError(f"--box must be an even number >= 16, got {args.box}")
    if args.n < 200:
        raise InputError("--n must be at least 200")
    out = Path(args.out)
    if (out / "run" / "checkpoints" / "last.pt").exists():
        raise InputError("already holds a demo run; choose another -o", out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print(f"[1/4] simulating {args.n} particles, box {args.box}, SNR {args.snr}, two states ...", flush=True)
    sim_cfg = demo_config(out / "data", n=args.n, box=args.box, snr=args.snr, seed=args.seed)
    sim_cfg.overwrite = True
    sim = simulate(sim_cfg)
    print(f"      {sim.n} images at {sim.apix:.2f} A/px in {sim.seconds:.1f} s -> {out / 'data'}")

    budget_s = 60.0 * args.minutes
    particles = str((out / "data" / "particles.star").resolve())
    rate = _images_per_second(particles, out / "calibration", args)
    n_img = int(min(args.num_images, max(2000, 0.9 * budget_s * rate)))
    print(f"      measured {1e3 / rate:.1f} ms/image: planning {n_img} training images", flush=True)
    cfg = TrainConfig(particles=particles, outdir=str(out / "run"),
                      zdim=args.zdim, num_images=n_img, batch_size=32, seed=args.seed, device="cpu",
                      pose_only_images=int(args.pose_only_fraction * n_img), freq_start=4,
                      freq_add_every=max(1, int(0.6 * n_img / max(1, args.box // 2 - 4))),
                      checkpoint_every=max(1000, n_img // 4), num_threads=args.threads,
                      invert_data="yes")  # the simulator writes RELION-convention (inverted) images
    if args.schedule is not None:
        import dataclasses

        if "schedule" not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise InputError("--schedule: this version of the trainer has a single schedule")
        cfg.schedule = args.schedule
    if cfg.schedule == "seeded":
        seeded_demo_settings(cfg, args)
        n_img = cfg.num_images
    first = "ab initio seed, then distill" if cfg.schedule == "seeded" else "pose-only phase first"
    print(f"[2/4] training (at most {args.minutes:g} min or {n_img} images; {first}) ...", flush=True)
    trainer = Trainer(cfg)
    t0 = time.time()
    last_print = 0.0
    stopping = False
    for ev in trainer.run():
        if isinstance(ev, Started):
            print(f"      {ev.n_train} training / {ev.n_val} validation particles")
        elif isinstance(ev, Step):
            el = time.time() - t0
            if el - last_print > 15:
                last_print = el
                print(f"      {ev.images_seen:7d} images  {el:5.0f} s  loss {ev.loss:.4g}  radius {ev.mask_radius} px"
                      f"  {ev.phase}", flush=True)
            if el > budget_s and not stopping:
                stopping = True
                # a time-capped run ends as a shorter run: the pose-only phase must have ended for z to mean anything
                trainer.request_stop()
        elif isinstance(ev, Checkpoint):
            pc = "" if ev.pose_change_deg is None else f", poses moved {ev.pose_change_deg:.1f} deg"
            print(f"      checkpoint at {ev.images_seen} images: validation loss {ev.val_loss:.4g}{pc}")
        elif isinstance(ev, Message):
            print(f"      {ev.level}: {ev.text}")
        elif isinstance(ev, Failed):
            print(f"cryofire demo: training failed: {ev.message}", file=sys.stderr)
            return 1
        elif isinstance(ev, Finished):
            print(f"      finished after {ev.images_seen} images in {time.time() - t0:.0f} s")

    if cfg.schedule == "amortized" and trainer.images_seen < cfg.pose_only_images:
        print(f"      warning: training stopped in the pose-only phase ({trainer.images_seen} of "
              f"{cfg.pose_only_images} images): z is not trained yet, so the two states cannot separate. "
              "Give it more --minutes.")
    print("[3/4] analyzing the latent space and decoding volumes ...", flush=True)
    an_dir = out / "analysis"
    summary = analyze(out / "run", k=2, out=an_dir, pcs=[1], n=5)

    print("[4/4] comparing with the ground truth ...", flush=True)
    run = Run(out / "run")
    gt_rot, gt_trans = read_pose_pkl(out / "data" / "poses.pkl")
    labels = np.load(out / "data" / "labels.npy")
    maps = load_gt_maps([out / "data" / "gt_state_0.mrc", out / "data" / "gt_state_1.mrc"], run.D)
    res = evaluate(predictions_from_run(run), gt_rot, gt_trans, gt_labels=labels, gt_maps=maps, decode=run.decode)
    res["wall_s_total"] = time.time() - t_start
    res["train_images_seen"] = int(run.images_seen)
    write_json(out / "eval.json", res)
    for name, val in table_row(res).items():
        print(f"      {name:28s} {val}")
    print(f"      (chance level: rotation median ~90 deg, confusion {min(labels.mean(), 1 - labels.mean()):.2f})")

    k = summary["kmeans"]["k"] if "kmeans" in summary else None
    print(f"\ndone in {time.time() - t_start:.0f} s. Results in {out.resolve()}:")
    if k:
        vols = sorted(p.name for p in (an_dir / f"kmeans{k}").glob("vol_*.mrc"))
        print(f"  maps of the {k} cluster(s):  {an_dir.resolve()}/kmeans{k}/{', '.join(vols)} "
              f"(sizes {summary['kmeans']['sizes']})")
        print(f"  maps along PC1:            {an_dir.resolve()}/pc1/vol_000.mrc .. vol_004.mrc")
    print(f"  ground-truth maps:         {(out / 'data').resolve()}/gt_state_0.mrc, gt_state_1.mrc")
    print(f"  plots:                     {an_dir.resolve()}/loss.png, pc_scatter.png, views.png")
    print(f"  evaluation:                {(out / 'eval.json').resolve()}")
    print(f"  trained run:               {(out / 'run').resolve()}  (cryofire analyze/volume/eval work on it)")
    return 0
