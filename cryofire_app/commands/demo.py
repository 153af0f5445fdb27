"""Run the whole pipeline headless on the bundled 70S ribosome map (no display, no download).

1. simulate a small two-state set (a 20-degree hinge motion of part of the map; 2 states, CTF, small shifts, noise)
2. train cryoFIRE on it for a fixed budget of images or wall-clock minutes (whichever ends first)
3. analyze: PCA/k-means of z, volumes at the 2 cluster centres and along PC1, plots; with the seeded schedule also
   the ab initio seed's state labels (run/seed_states.npz; the seed chooses the number of states, unless --states):
   per-state selections and volumes at each state's mean z
4. evaluate against the simulation's ground truth (pose errors, FSC, and the state confusion of both splits: the seed's
   labels and PC1 of the run's z) -> eval.json
5. hand: ab initio cannot know the hand of its map (a mirrored map with mirrored poses explains the same images);
   the demo knows the truth, so it takes the hand from the pose alignment against the simulated poses (cross-checked
   against the simulated map, analysis/hand.py) and writes the consensus and state maps in the correct hand -> maps/,
   plus demo_summary.json with the hand decision and the headline numbers
and print where everything is. Open maps/ in ChimeraX/napari next to data/gt_state_0.mrc and gt_state_1.mrc
(maps/*_gt_frame.mrc are also rotated into the simulation's frame, to overlay them directly).

example:  cryofire demo -o demo_out            (a few minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder (created; must not hold an earlier demo run)")
    # the sample's size: box 32 has too few pixels for the seed search (docs/decisions/009-demo-settings.md)
    p.add_argument("--n", type=int, default=3000, help="simulated particles (default 3000)")
    p.add_argument("--box", type=int, default=64, help="image box in pixels (even; default 64)")
    p.add_argument("--snr", type=float, default=1.0, help="signal-to-noise ratio of the images (default 1.0)")
    p.add_argument("--minutes", type=float, default=5.0,
                   help="wall-clock budget for training after the ab initio seed (the seed always completes; its "
                        "own time is reported); default 5")
    p.add_argument("--num-images", type=int, default=200_000,
                   help="training budget in images, if reached before --minutes (default 200000)")
    p.add_argument("--pose-only-fraction", type=float, default=None,
                   help="--schedule amortized only: fraction of the budget spent in the pose-only phase before z is "
                        "used (default 0.4); the seeded schedule has no pose-only phase (see --distill-fraction)")
    p.add_argument("--distill-fraction", type=float, default=None,
                   help="seeded schedule only: fraction of the budget spent distilling the ab initio seed's poses "
                        "into the encoder before the joint fine-tune (default 0.85)")
    p.add_argument("--zdim", type=int, default=2, help="latent dimension (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--states", type=int, default=None, metavar="K",
                   help="seeded schedule: number of discrete states the seed looks for (default: chosen from the "
                        "data; 1: no heterogeneity step)")
    p.add_argument("--schedule", default=None, choices=("seeded", "amortized"),
                   help="training schedule: seeded (the trainer's default: ab initio seed, distill, joint fine-tune) "
                        "or amortized (the paper's pure cryoFIRE loop; needs far more images than a demo has)")


def _images_per_second(particles: str, folder: Path, args: argparse.Namespace) -> float:
    """Training throughput on this machine: a few steps of a throw-away run (its folder is removed)."""
    import shutil

    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.events import Step
    from cryofire_app.training.trainer import Trainer

    cfg = TrainConfig.of(particles=particles, outdir=str(folder), zdim=args.zdim, num_images=32 * 12, batch_size=32,
                         seed=args.seed, device="cpu", pose_only_images=32 * 6, num_threads=args.threads,
                         checkpoint_every=10 ** 9, latents_every=10 ** 9, invert_data="yes",
                         freq_start=max(4, 3 * args.box // 8))  # cost grows with the radius: plan for the upper part
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
    """Apply training.presets.demo_overrides to `cfg` (--distill-fraction, when given, replaces its 0.85)."""
    from cryofire_app.training.presets import demo_overrides

    for k, v in demo_overrides(args.n, args.box, args.seed, args.num_images).items():
        cfg.set(k, v)
    if args.distill_fraction is not None:
        cfg.seeded.distill_fraction = float(args.distill_fraction)
    if getattr(args, "states", None) is not None:
        cfg.seeded.seed_config = dict(cfg.seeded.seed_config, n_states=int(args.states))


def write_handed_maps(out: Path, run, res: dict, gt_maps: list, states_dir: Path | None) -> dict:
    """Step 5: the consensus map (decoded at the mean z) and the state maps (the vol_<i>.mrc of `states_dir`: the
    analysis' seed-state or k-means volumes) in the hand of the simulation, and the run's poses to match; also the
    maps rotated into the simulation's frame. Returns the summary's hand section (decision by the pose alignment
    against the ground truth, cross-check by the maps)."""
    import numpy as np

    from cryofire_app.analysis import hand, metrics
    from cryofire_app.io import read_mrc, write_mrc

    maps_dir = out / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    al = res["alignment"]
    by_poses = hand.hand_from_alignment(al)
    flip = by_poses == "flipped"
    alignment = metrics.RotationAlignment(np.asarray(al["A"]), bool(al["flipped"]), float(al["score"]))
    apix = float(run.apix)
    z = np.asarray(run.z, np.float32)
    vols = {"consensus": run.decode(z.mean(0, keepdims=True) if z.size else None)[0]}
    for p in sorted(states_dir.glob("vol_*.mrc")) if states_dir is not None else []:
        vols[f"state_{int(p.stem.split('_')[1])}"] = read_mrc(p)[0]
    # the density sign follows the particles' contrast convention; evaluate() compared like with like
    sign = -1.0 if any(m.get("density_sign_inverted") for m in res.get("fsc", {}).get("maps", [])) else 1.0
    by_map = hand.hand_against_reference(sign * vols["consensus"], gt_maps[0])
    files = {}
    for name, vol in vols.items():
        p = maps_dir / f"{name}.mrc"
        write_mrc(p, hand.mirror_volume(vol) if flip else vol, apix=apix)
        g = maps_dir / f"{name}_gt_frame.mrc"
        write_mrc(g, metrics.align_volume_to_gt(vol, alignment, gt=sign * gt_maps[0]), apix=apix)
        files[name] = str(p.resolve())
        files[f"{name}_gt_frame"] = str(g.resolve())
    hand.write_pose_pkl_in_hand(maps_dir / "pose.pkl", np.asarray(run.rot, np.float64),
                                (np.asarray(run.trans, np.float64) / run.D).astype(np.float32), mirror=flip)
    files["poses"] = str((maps_dir / "pose.pkl").resolve())
    return {"hand": hand.HAND_NOTE_FLIPPED if flip else hand.HAND_NOTE_CORRECT,
            "hand_from_poses": by_poses, "hand_pose_alignment_scores": al.get("scores", {}),
            "hand_from_map": by_map.to_dict(), "maps_mirrored": flip, "maps": files,
            "maps_note": "maps/<name>.mrc: the run's frame in the correct hand (maps/pose.pkl matches them); "
                         "maps/<name>_gt_frame.mrc: rotated and shifted onto the simulated map"}


def _check_args(args: argparse.Namespace) -> str:
    """Refuse inconsistent arguments before any work; returns the schedule ("seeded" or "amortized")."""
    from cryofire_app.training.config import TrainConfig

    if args.box < 16 or args.box % 2:
        raise InputError(f"--box must be an even number >= 16, got {args.box}")
    if args.n < 200:
        raise InputError("--n must be at least 200")
    schedule = args.schedule or TrainConfig().schedule
    if schedule == "seeded" and args.pose_only_fraction is not None:
        raise InputError("--pose-only-fraction applies to --schedule amortized only (the seeded schedule has no "
                         "pose-only phase; its counterpart is --distill-fraction)")
    if schedule == "amortized" and args.distill_fraction is not None:
        raise InputError("--distill-fraction applies to the seeded schedule only")
    for name in ("pose_only_fraction", "distill_fraction"):
        v = getattr(args, name)
        if v is not None and not 0 <= v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
    return schedule


def _simulate_data(out: Path, args: argparse.Namespace) -> None:
    """Step 1: the two-state particle set in out/data (particles.star, poses.pkl, labels.npy, gt_state_*.mrc)."""
    from cryofire_app.simulate import demo_config, simulate

    print(f"[1/5] simulating {args.n} particles, box {args.box}, SNR {args.snr}, two states ...", flush=True)
    sim_cfg = demo_config(out / "data", n=args.n, box=args.box, snr=args.snr, seed=args.seed)
    sim_cfg.overwrite = True
    sim = simulate(sim_cfg)
    print(f"      {sim.n} images at {sim.apix:.2f} A/px in {sim.seconds:.1f} s -> {out / 'data'}")


def _train_config(out: Path, args: argparse.Namespace, schedule: str):
    """Step 2's TrainConfig and its image budget: amortized plans the budget from the measured speed (at most
    --num-images, at least 2000), seeded takes training.presets.demo_overrides (a fixed number of passes)."""
    from cryofire_app.training.config import TrainConfig

    budget_s = 60.0 * args.minutes
    particles = str((out / "data" / "particles.star").resolve())
    n_img = int(args.num_images)
    if schedule == "amortized":  # plan the image budget from the measured speed (seeded: a fixed number of passes)
        rate = _images_per_second(particles, out / "calibration", args)
        n_img = int(min(args.num_images, max(2000, 0.9 * budget_s * rate)))
        print(f"      measured {1e3 / rate:.1f} ms/image: planning {n_img} training images", flush=True)
    pose_only = 0.4 if args.pose_only_fraction is None else args.pose_only_fraction
    cfg = TrainConfig.of(particles=particles, outdir=str(out / "run"), schedule=schedule,
                         zdim=args.zdim, num_images=n_img, batch_size=32, seed=args.seed, device="cpu",
                         pose_only_images=int(pose_only * n_img), freq_start=4,
                         freq_add_every=max(1, int(0.6 * n_img / max(1, args.box // 2 - 4))),
                         checkpoint_every=max(1000, n_img // 4), num_threads=args.threads,
                         invert_data="yes")  # the simulator writes RELION-convention (inverted) images
    if schedule == "seeded":
        seeded_demo_settings(cfg, args)
        n_img = cfg.num_images
    return cfg, n_img


@dataclasses.dataclass
class _Training:
    """Step 2's outcome: the trainer, its wall-clock seconds (all, and of them the ab initio seed's) and the run's
    own Verdict event (None when it sent none)."""
    trainer: Any
    t_train: float
    t_seed: float
    verdict: Any


def _train(cfg, args: argparse.Namespace, schedule: str, n_img: int) -> _Training | None:
    """Step 2: run the trainer, printing its progress; the --minutes budget starts with the first training step on
    images (the seed always completes). None when training failed (reported on stderr)."""
    from cryofire_app.commands.console import event_line
    from cryofire_app.training.events import Failed, Finished, Started, Step, Verdict
    from cryofire_app.training.trainer import Trainer

    budget_s = 60.0 * args.minutes
    first = "ab initio seed, then distill" if schedule == "seeded" else "pose-only phase first"
    print(f"[2/5] training (at most {args.minutes:g} min or {n_img} images; {schedule} schedule: {first}) ...",
          flush=True)
    trainer = Trainer(cfg)
    t0 = time.time()
    t_budget = None  # the budget clock starts with the first training step on images (after a seed)
    t_seed = 0.0
    last_print = 0.0
    stopping = False
    verdict = None
    for ev in trainer.run():
        if isinstance(ev, Started):
            print(f"      {ev.n_train} training / {ev.n_val} validation particles")
        elif isinstance(ev, Step):
            el = time.time() - t0
            if el - last_print > 15:
                last_print = el
                what = f"seed step {ev.step}" if ev.phase == "seed" else f"{ev.images_seen:7d} images"
                print(f"      {what}  {el:5.0f} s  loss {ev.loss:.4g}  radius {ev.mask_radius} px  {ev.phase}",
                      flush=True)
            # a time-capped run ends as a shorter run; the seed (no model yet) always completes
            if ev.phase != "seed" and t_budget is None:
                t_budget = time.time()
                t_seed = t_budget - t0 if schedule == "seeded" else 0.0
            if t_budget is not None and time.time() - t_budget > budget_s and not stopping:
                stopping = True
                trainer.request_stop()
        elif (line := event_line(ev)) is not None:   # messages, phases, seed stages, checkpoints, the verdict
            verdict = ev if isinstance(ev, Verdict) else verdict
            print(f"      {line}")
        elif isinstance(ev, Failed):
            print(f"cryofire demo: training failed: {ev.message}", file=sys.stderr)
            return None
        elif isinstance(ev, Finished):
            print(f"      finished after {ev.images_seen} images in {time.time() - t0:.0f} s")
    return _Training(trainer, time.time() - t0, t_seed, verdict)


def _evaluate(out: Path, t_start: float):
    """Step 4: the run against the simulation's ground truth -> out/eval.json, printed as a table.
    Returns (run, evaluation, ground-truth state labels, ground-truth maps at the run's box)."""
    import numpy as np

    from cryofire_app.analysis.evaluate import evaluate, load_gt_maps, predictions_from_run, table_row, write_json
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_pose_pkl

    print("[4/5] comparing with the ground truth ...", flush=True)
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
    return run, res, labels, maps


def _hand_step(out: Path, an_dir: Path, run, res: dict, maps: list, summary: dict):
    """Step 5: decide the hand and write maps/ (write_handed_maps), printing the decision and its cross-check.
    Returns (the hand section, whether the state maps are the seed's states, the k-means k or None)."""
    print("[5/5] hand: deciding it against the simulated ground truth and writing the maps ...", flush=True)
    k = summary["kmeans"]["k"] if "kmeans" in summary else None
    # the state maps come from the run's state split: the seed's labels when the run has them, else k-means of z
    seeded_maps = "seed_state_volumes" in summary["files"]
    states_dir = an_dir / "seed_states" if seeded_maps else (an_dir / f"kmeans{k}" if k else None)
    hand = write_handed_maps(out, run, res, maps, states_dir)
    hm = hand["hand_from_map"]
    print(f"      hand: {hand['hand']}")
    print(f"      (pose alignment against the simulated poses: {hand['hand_from_poses']}; map check against the "
          f"simulated map: {hm['hand']}, correlation {hm['cc_correct']:.2f} as is vs {hm['cc_flipped']:.2f} "
          "mirrored)")
    if hm["hand"] != "undetermined" and hm["hand"] != hand["hand_from_poses"]:
        print("      warning: the map check disagrees with the pose alignment; the maps follow the poses")
    return hand, seeded_maps, k


def main(args: argparse.Namespace) -> int:
    from cryofire_app.analysis.evaluate import write_json
    from cryofire_app.commands._demo_report import Outcome, demo_summary_dict, print_files, print_headline
    from cryofire_app.commands.analyze import analyze

    schedule = _check_args(args)
    out = Path(args.out)
    if RunDir(out / "run").last_checkpoint.exists():
        raise InputError("already holds a demo run; choose another -o", out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    _simulate_data(out, args)
    cfg, n_img = _train_config(out, args, schedule)
    training = _train(cfg, args, schedule, n_img)
    if training is None:
        return 1
    trainer = training.trainer
    if schedule == "amortized" and trainer.images_seen < cfg.amortized.pose_only_images:
        print(f"      warning: training stopped in the pose-only phase ({trainer.images_seen} of "
              f"{cfg.amortized.pose_only_images} images): z is not trained yet, so the two states cannot separate. "
              "Give it more --minutes.")
    print("[3/5] analyzing the latent space and decoding volumes ...", flush=True)
    an_dir = out / "analysis"
    summary = analyze(out / "run", k=2, out=an_dir, pcs=[1], n=5)

    run, res, labels, maps = _evaluate(out, t_start)
    hand, seeded_maps, k = _hand_step(out, an_dir, run, res, maps, summary)
    outcome = Outcome(out, an_dir, schedule, run, res, labels, summary, hand, seeded_maps, k, training.t_train,
                      training.t_seed, training.verdict, wall=time.time() - t_start)
    demo_summary = demo_summary_dict(outcome, args)
    write_json(out / "demo_summary.json", demo_summary)
    print_headline(outcome)
    print_files(outcome, demo_summary["state_maps_from"])
    return 0
