"""`cryofire demo`'s closing report: demo_summary.json's fields and the summary printed at the end."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Outcome:
    """Everything the demo's summary file and closing report are made of (times in seconds)."""
    out: Path
    an_dir: Path
    schedule: str
    run: Any
    res: dict          # the evaluation (eval.json)
    labels: Any        # ground-truth state per particle
    summary: dict      # the analysis summary (analysis/summary.json)
    hand: dict         # write_handed_maps' section
    seeded_maps: bool  # state maps from the seed's states (else k-means of z)
    k: int | None      # k-means clusters of z, None without a k-means split
    t_train: float     # training wall-clock seconds, the seed included
    t_seed: float      # of which the ab initio seed's
    verdict: Any       # the run's own Verdict event, None when it sent none
    wall: float


def demo_summary_dict(o: Outcome, args: argparse.Namespace) -> dict:
    """demo_summary.json: the hand decision and the headline numbers."""
    res, hand, verdict = o.res, o.hand, o.verdict
    return {
        "hand": hand["hand"],
        "verdict": None if verdict is None else verdict.verdict,
        "verdict_reasons": None if verdict is None else verdict.reasons,
        "schedule": o.schedule, "n_images": int(args.n), "box": int(args.box), "snr": float(args.snr),
        "train_images_seen": int(o.run.images_seen), "train_s": o.t_train, "seed_s": o.t_seed,
        "wall_s_total": o.wall,
        "rot_view_median_deg": res.get("rot_view_median_deg"), "rot_view_mean_deg": res.get("rot_view_mean_deg"),
        "confusion": res.get("confusion"), "trans_median_px": res.get("trans_median_px"),
        "confusion_z_pc1": res.get("confusion"), "confusion_seed_states": res.get("confusion_seed_states"),
        "seed_states_n_images": res.get("seed_states_n_images"),
        "seed_state_sizes": o.summary["seed_states"]["sizes"] if "seed_states" in o.summary else None,
        "confusion_note": "confusion_seed_states: the ab initio seed's own hard two-state labels (run/seed_states.npz, "
                          "training particles; only the label numbering is matched to the truth); confusion_z_pc1 "
                          "(= confusion): PC1 of the run's z, thresholded where the truth says is best",
        "state_maps_from": "seed states" if o.seeded_maps else ("k-means of z" if o.k else None),
        "res_major_0.5_A": res.get("res_major_0.5_A"), "res_minor_0.5_A": res.get("res_minor_0.5_A"),
        "res_major_0.143_A": res.get("res_major_0.143_A"), "res_minor_0.143_A": res.get("res_minor_0.143_A"),
        "apix_A": float(o.run.apix), **{k2: v for k2, v in hand.items() if k2 != "hand"},
    }


def _fmt(v, f: str) -> str:
    return "-" if v is None else f.format(v)


def print_headline(o: Outcome) -> None:
    """The closing summary: time taken and the headline numbers against the truth."""
    res, labels, verdict = o.res, o.labels, o.verdict
    t_train, t_seed = o.t_train, o.t_seed
    print(f"\ndone in {o.wall:.0f} s (training {t_train:.0f} s" +
          (f", of which the ab initio seed {t_seed:.0f} s" if t_seed else "") + "). Summary:")
    print(f"  median view-direction error   {_fmt(res.get('rot_view_median_deg'), '{:.2f}')} deg  (chance ~90)")
    chance = f"chance {min(labels.mean(), 1 - labels.mean()):.0%}"
    if res.get("confusion_seed_states") is not None:
        print(f"  state confusion, seed labels  {res['confusion_seed_states']:.1%}  (the ab initio seed's own "
              f"two-state labels of the {res['seed_states_n_images']} training particles, run/seed_states.npz; "
              f"{chance})")
    print(f"  state confusion, z PC1        {_fmt(res.get('confusion'), '{:.1%}')}  (PC1 of the run's z, best "
          f"threshold against the truth; {chance})")
    print(f"  FSC 0.5 vs simulated maps     {_fmt(res.get('res_major_0.5_A'), '{:.1f}')} A (major state), "
          f"{_fmt(res.get('res_minor_0.5_A'), '{:.1f}')} A (minor); Nyquist {2 * o.run.apix:.1f} A")
    print(f"  hand                          {o.hand['hand']}")
    print(f"  run's own verdict             {'-' if verdict is None else verdict.verdict}  (without the truth: "
          "run/report.json)")


def print_files(o: Outcome, state_maps_from: str | None) -> None:
    """Where everything was written."""
    out, an_dir, summary, k = o.out, o.an_dir, o.summary, o.k
    print(f"Results in {out.resolve()}:")
    print(f"  maps, correct hand:        {(out / 'maps').resolve()}/consensus.mrc, " +
          ", ".join(f"{n}.mrc" for n in o.hand["maps"] if n.startswith("state_") and not n.endswith("frame")) +
          (f" (states: {state_maps_from})" if state_maps_from else "") +
          " (+ *_gt_frame.mrc overlaid on the simulation, pose.pkl)")
    if o.seeded_maps:
        print(f"  seed states (run's hand):  {an_dir.resolve()}/seed_states/ (sizes {summary['seed_states']['sizes']}: "
              "maps and per-state particle selections)")
    if k:
        print(f"  k-means of z (run's hand): {an_dir.resolve()}/kmeans{k}/ (sizes {summary['kmeans']['sizes']})")
        print(f"  maps along PC1:            {an_dir.resolve()}/pc1/vol_000.mrc .. vol_004.mrc (run's hand)")
    print(f"  ground-truth maps:         {(out / 'data').resolve()}/gt_state_0.mrc, gt_state_1.mrc")
    print(f"  plots:                     {an_dir.resolve()}/loss.png, pc_scatter.png, " +
          ("pc_scatter_seed_states.png, " if "pc_scatter_seed_states" in summary["files"] else "") + "views.png")
    print(f"  evaluation:                {(out / 'eval.json').resolve()}, {(out / 'demo_summary.json').resolve()}")
    print(f"  trained run:               {(out / 'run').resolve()}  (cryofire analyze/volume/eval work on it; "
          f"`cryofire volume ... --flip-hand` mirrors)")
