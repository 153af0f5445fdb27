"""Benchmark of the ab initio seeding stage (cryofire_app.reconstruct) on issue 5's target set.

Simulates (cryofire_app.simulate) N images from the bundled 70S ribosome map, two hinge states 90/10, SNR 0.1, random
CTF (1-2.5 um), shifts up to 4 px, box 64; runs ``seed_abinit`` and scores it against the ground truth: median view-
direction error after global alignment with both hands (analysis.metrics), translation error, state confusion, FSC of
the consensus map against state 0 (aligned in the found hand), wall time, and a convergence curve (error after every
stage that reports poses). Writes benchmarks/results/abinit_seed.json and .md.

    OMP_NUM_THREADS=2 python benchmarks/abinit_seed.py [--n 5000] [--threads 2] [--data DIR] [--tag NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cryofire_app.analysis import metrics
from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl
from cryofire_app.reconstruct import SeedConfig, iter_seed_abinit

RESULTS = Path(__file__).resolve().parent / "results"


def make_data(outdir: Path, n: int, seed: int) -> None:
    from cryofire_app.simulate import demo_config, simulate
    cfg = demo_config(outdir, n=n, box=64, snr=0.1, seed=seed)
    cfg = replace(cfg, fractions=(0.9, 0.1), max_shift_px=4.0, overwrite=True)
    simulate(cfg)


def confusion(state: np.ndarray, labels: np.ndarray) -> float:
    """Misclassified fraction under the best matching of predicted to true labels (2 states: min over the swap)."""
    k = int(max(state.max(), labels.max())) + 1
    if k == 2:
        e = float(np.mean(state != labels))
        return min(e, 1 - e)
    from itertools import permutations
    return min(float(np.mean(np.asarray(p)[state] != labels)) for p in permutations(range(k)))


def write_markdown(path: Path, out: dict) -> None:
    r, t = out["rotation"], out["translation_global_corrected"]
    fsc = out["fsc_consensus_vs_state0"]
    lines = [
        f"# Ab initio seeding on issue 5's target set ({out['data']['n']} images, box {out['data']['box']}, SNR 0.1,"
        " 2 hinge states 90/10, CTF, shifts <= 4 px)",
        "",
        f"Machine: {out['machine']['cpu_count']} CPU cores shared with other developers' jobs, "
        f"torch threads {out['machine']['torch_threads']}. Produced by `benchmarks/abinit_seed.py`.",
        "",
        "| wall time | view error median / mean | full rotation median | translation median (global-corrected) |"
        " confusion (hard labels) | hand | FSC=0.5 / 0.143 consensus vs state 0 |",
        "|---|---|---|---|---|---|---|",
        f"| {out['wall_s'] / 60:.1f} min | {r['rot_view_median_deg']:.2f} / {r['rot_view_mean_deg']:.2f} deg |"
        f" {r['rot_full_median_deg']:.2f} deg | {t['trans_median_px']:.2f} px |"
        f" {out.get('confusion', float('nan')):.4f}"
        f" (threshold on score: {out.get('confusion_threshold_score', float('nan')):.4f}) |"
        f" {out['hand_found']} | {fsc['res_0.5_px']:.2f} / {fsc['res_0.143_px']:.2f} px |",
        "",
        "Convergence (error after each stage that reports poses):",
        "",
        "| stage | step | elapsed | view median | confusion |",
        "|---|---|---|---|---|",
    ]
    for p in out["curve"]:
        lines.append(f"| {p['stage']} | {p['step']} | {p['elapsed_s']:.0f} s | {p['view_median_deg']:.2f} deg |"
                     f" {p.get('confusion', '')} |")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0, help="simulation seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="existing simulate() output folder (else a temp dir)")
    ap.add_argument("--tag", default="abinit_seed")
    return ap.parse_args()


def prepare_data(data: Path | None, n: int, seed: int) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The simulate() folder to read: `data` if it already holds particles.mrcs, else simulated there (or in a new
    temporary directory, returned so that the caller can clean it up)."""
    tmp = None
    if data is None or not (data / "particles.mrcs").exists():
        if data is None:
            tmp = tempfile.TemporaryDirectory()
            data = Path(tmp.name)
        t = time.time()
        make_data(data, n, seed)
        print(f"simulated {n} images in {time.time() - t:.0f} s")
    return data, tmp


def load_truth(data: Path, n: int) -> dict:
    """The first n images and CTF rows with their ground truth: rotations, shifts in px (poses.pkl stores them as
    fractions of the box), state labels and state 0's map."""
    images = read_mrc(data / "particles.mrcs")[0][:n]
    gt_rot, gt_tf = read_pose_pkl(data / "poses.pkl")
    return {"images": images, "ctf": read_ctf_pkl(data / "ctf.pkl")[:n], "rot": gt_rot[:n],
            "trans_px": gt_tf[:n] * images.shape[-1], "labels": np.load(data / "labels.npy")[:n],
            "map": read_mrc(data / "gt_state_0.mrc")[0]}


def run_seed(gt: dict, cfg: SeedConfig) -> tuple[object, list[dict], float]:
    """Run iter_seed_abinit, printing one line per event; every event with poses adds a convergence point (view
    error in deg after alignment, the hand, and the state confusion when states are given). Returns (the seed's
    result, the curve, wall seconds)."""
    curve = []
    t0 = time.time()
    gen = iter_seed_abinit(gt["images"], gt["ctf"], cfg)
    while True:
        try:
            e = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        line = f"{e.elapsed_s:7.1f}s {e.stage:7s} {e.step}/{e.total} {e.message}"
        if e.rot is not None:
            er = metrics.rotation_errors(e.rot, gt["rot"])
            pt = {"stage": e.stage, "step": e.step, "elapsed_s": e.elapsed_s,
                  "view_median_deg": er["rot_view_median_deg"], "hand": er["alignment"]["hand"]}
            if e.state is not None:
                pt["confusion"] = confusion(np.asarray(e.state), gt["labels"])
            curve.append(pt)
            line += f" | view {er['rot_view_median_deg']:.2f} deg ({er['alignment']['hand']})"
            if "confusion" in pt:
                line += f" confusion {pt['confusion']:.4f}"
        print(line, flush=True)
    return res, curve, time.time() - t0


def score(res, gt: dict, args: argparse.Namespace, wall: float, curve: list[dict]) -> dict:
    """The results dict: data and machine, the seed's config, wall seconds, rotation errors (deg) and the hand,
    translation errors (px, raw and after the global correction), state confusion and sizes, and the FSC (px) of the
    consensus map (density sign applied) against state 0 aligned in the found hand."""
    images, gt_rot, gt_t = gt["images"], gt["rot"], gt["trans_px"]
    rot_err = metrics.rotation_errors(res.rot, gt_rot)
    al = metrics.align_rotations(res.rot, gt_rot)
    out = {
        "task": "issue 5 target: ab initio seeding (cryofire_app.reconstruct.seed_abinit)",
        "data": {"n": int(len(images)), "box": int(images.shape[-1]), "snr": 0.1, "states": "hinge 2 states 90/10",
                 "max_shift_px": 4.0, "map": "ribosome70S_65.mrc (5 A/voxel)", "sim_seed": args.seed},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform()},
        "config": res.history["config"],
        "wall_s": wall,
        "rotation": {k: v for k, v in rot_err.items() if k != "alignment"},
        "hand_found": rot_err["alignment"]["hand"],
        "translation": metrics.translation_errors(res.trans_px, gt_t),
        "translation_global_corrected": metrics.translation_errors(res.trans_px, gt_t, gt_rot, correct_global=True),
        "density_sign": res.history.get("density_sign"),
        "curve": curve,
    }
    if res.state is not None:
        out["confusion"] = confusion(res.state, gt["labels"])
        out["confusion_threshold_score"] = metrics.confusion_by_thresholds(res.state_score, gt["labels"])["confusion"]
        out["state_sizes"] = np.bincount(res.state, minlength=2).tolist()
    vol = res.volume * (res.history.get("density_sign") or 1)
    aligned = metrics.align_volume_to_gt(vol, al, gt=gt["map"])
    out["fsc_consensus_vs_state0"] = metrics.fsc_report(aligned, gt["map"])
    return out


def write_json(path: Path, out: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1, default=float))
    os.replace(tmp, path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data, tmp = prepare_data(args.data, args.n, args.seed)
    gt = load_truth(data, args.n)
    res, curve, wall = run_seed(gt, SeedConfig())
    out = score(res, gt, args, wall, curve)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{args.tag}.json", out)
    write_markdown(RESULTS / f"{args.tag}.md", out)
    print(json.dumps({k: out.get(k) for k in ("wall_s", "rotation", "confusion", "translation")}, indent=1,
                     default=float))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
