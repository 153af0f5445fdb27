"""Distill-step cost: ms per image of the seeded schedule's distill phase on a finished accuracy.py workdir.

Builds the real Trainer on the workdir's training split with its seed (``--seed-from``, no pose search), lets it
fit the synthetic-image renderer, skips ``--warmup`` images and times the next ``--images`` images of distill steps.
Variants, run in turn (``--repeats`` rounds, so that their ratio survives a shared machine):
  - ``before``: synthetic ratio 1, Adam's per-tensor loop, the map's slices over the whole disc up to Nyquist
    (the code before 2026-11-25's speed-ups);
  - ``fused``: the same with fused Adam (the trainer's default);
  - ``ratio R``: the trainer's defaults (fused Adam, slices limited to the encoder's band) at synthetic ratio R.
The ``before`` and ``fused`` variants change the built trainer in place (its optimiser before the first step, its
renderer's band after the fit); nothing else differs. Results: results/distill_step-<date>-<host>.json and .md.

usage:  python benchmarks/distill_step.py --workdir DIR [--images 16000] [--warmup 3200] [--threads 2]
        [--repeats 2] [--ratios 0,0.5,1]
        (DIR: an ``accuracy.py --issue5`` workdir with train_data/particles.star and run/checkpoints/seed.npz)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"


def time_variant(workdir: Path, ratio: float, fused: bool, band: bool, images: int, warmup: int) -> dict:
    import torch

    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.of(particles=str(workdir / "train_data" / "particles.star"), outdir=str(Path(tmp) / "run"),
                             num_images=400_000, seed_from=str(workdir / "run" / "checkpoints" / "seed.npz"),
                             distill_synth_ratio=ratio, checkpoint_every=10 ** 9, latents_every=10 ** 9)
        tr = Trainer(cfg)
        swapped = widened = False
        t0 = n0 = None
        events = tr.run()
        for _ in events:
            if not fused and not swapped and tr.images_seen == 0:   # before the first step: no optimiser state yet
                tr.optim = torch.optim.Adam(tr.model.parameters(), lr=tr.optim.param_groups[0]["lr"])
                swapped = True
            if not band and not widened and tr.synth is not None:   # right after the fit, before any draw
                tr.synth.limit_band(tr.D)
                widened = True
            if t0 is None and tr.images_seen >= warmup:
                t0, n0 = time.perf_counter(), tr.images_seen
            if t0 is not None and tr.images_seen >= n0 + images:
                break
        dt_s = time.perf_counter() - t0
        seen = tr.images_seen - n0
        phase = tr.phase
        events.close()   # the generator's cleanup (the prefetching thread) before the folder goes
    if phase != "distill":
        raise RuntimeError(f"the timed steps left the distill phase ({phase}); lower --images or --warmup")
    return {"ms_per_image": 1e3 * dt_s / seen, "images": seen}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--images", type=int, default=16_000)
    p.add_argument("--warmup", type=int, default=3_200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ratios", default="0,0.5,1")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    variants = [("before", 1.0, False, False), ("fused", 1.0, True, False)]
    variants += [(f"ratio {float(r):g}", float(r), True, True) for r in args.ratios.split(",")]
    runs: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for rep in range(args.repeats):
        for name, ratio, fused, band in variants:
            r = time_variant(args.workdir, ratio, fused, band, args.images, args.warmup)
            runs[name].append(r["ms_per_image"])
            print(f"round {rep + 1}: {name:10s} {r['ms_per_image']:.2f} ms/image ({r['images']} images, "
                  f"load {os.getloadavg()[0]:.2f})", flush=True)
    now = dt.datetime.now(dt.timezone.utc)
    out = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "host": socket.gethostname(), "threads": args.threads,
           "workdir": str(args.workdir), "images": args.images, "warmup": args.warmup, "load_end": os.getloadavg(),
           "ms_per_image": runs,
           "median_ms_per_image": {k: sorted(v)[len(v) // 2] for k, v in runs.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"distill_step-{now.strftime('%Y%m%d-%H%M')}-{socket.gethostname()}"
    Path(f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    ref = min(runs["before"])
    lines = [f"# Distill-step cost ({out['date']}, {out['host']}, {args.threads} threads)", "",
             f"Issue 5's training split ({args.workdir.name}), seeded distill phase, images {args.warmup:,}-"
             f"{args.warmup + args.images:,} of 400k, batch 32. `before`: fused Adam off and the synthetic slices "
             f"over the whole disc; `fused`: fused Adam only; `ratio R`: the defaults at synthetic ratio R.", "",
             "| variant | ms/image, each round | best | best vs before |", "|---|---|---|---|"]
    for name, v in runs.items():
        lines.append(f"| {name} | {' / '.join(f'{x:.2f}' for x in v)} | {min(v):.2f} | {min(v) / ref:.2f} |")
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
