"""Throughput benchmark: cost per image of training steps and of encoder-only inference, FLOPs, GFLOP/s, memory.

For each box size (default 64) a small dataset is simulated from the bundled map, then one worker process per model
preset (so that peak RSS is per configuration) builds the real Trainer and measures:
  - training step, ms/image, in the joint phase at every radius of the frequency-marching schedule (default
    4, 8, 16, 24, 32 at box 64) and in the pose-only phase at the full radius, symmetric loss as configured (on);
  - a per-component split of one step at the full radius: data loading (one batch, single thread), encoder forward +
    backward (both branches), decoder + physics (CTF, shifts, slicing, loss) forward + backward, optimizer step;
  - FLOPs per image of a step (matmul/conv FLOPs of forward + backward counted by torch's FlopCounterMode; FFTs,
    grid sampling and elementwise ops not counted) and the achieved GFLOP/s, against a plain fp32 matmul
    (2048^2) measured in the same worker;
  - encoder-only inference (`predict(select="encoder")`, data loading included), images/s;
  - memory: peak RSS (VmHWM) and the largest anonymous RSS (RssAnon, sampled after each measurement) of the worker;
    file-backed pages of the memory-mapped stack count in RSS but not in RssAnon. With --n-large K the fast preset is
    also trained on a K-times longer stack (the same file listed K times in a .txt) to show memory independent of N.
Presets: "original" = the model as it was before issue 6 (3x256 random-Fourier-feature MLP decoder, full-resolution
first conv block, NCHW); "fast" = feature-grid decoder with half-lattice evaluation, pixel-unshuffle stem,
channels-last (`decoder.arch="grid"`, `encoder.stem="unshuffle"`). The original preset is timed at two radii only
(it takes ~0.4 s per image at the full radius); the two presets run in the same invocation, so their ratio is
meaningful even on a shared machine (the load average is recorded).
"Before" column: the numbers of an earlier results file (--before; default results/baseline/
throughput-20261124-0532-vm.json, the last run before issue 6's changes).
Results: benchmarks/results/throughput-<date>-<host>.json and .md, also printed.

usage:  python benchmarks/throughput.py [--boxes 64] [--batch 64] [--steps 12] [--threads 2] [--device cpu]
        [--presets fast,original] [--precision fp32|bf16|fp16] [--compile] [--n-large 8]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import long_stack  # noqa: E402  (a stack listed k times: k times the particles, no new pixels)
from throughput_measure import worker  # noqa: E402
from throughput_report import RESULTS, run_meta, write_results  # noqa: E402

BEFORE = RESULTS / "baseline" / "throughput-20261124-0532-vm.json"  # the original model, before issue 6
PRESETS = ("fast", "original")


def _simulate(outdir: Path, n: int, box: int) -> Path:
    from cryofire_app.simulate import demo_config, simulate

    cfg = demo_config(outdir, n=n, box=box, snr=0.1)
    cfg.overwrite = True
    simulate(cfg)
    return outdir / "particles.star"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; the --worker* ones (hidden) make this process one worker of a run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", default="64")
    p.add_argument("--batch", type=int, default=64, help="batch at box 64; scaled by (64/box)^2 for other boxes so "
                                                          "that memory stays about constant (at least 8)")
    p.add_argument("--steps", type=int, default=12, help="timed training steps per radius (at most)")
    p.add_argument("--seconds", type=float, default=30.0, help="stop timing a radius after this long (>= 3 steps)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder (GPU)")
    p.add_argument("--presets", default="fast,original")
    p.add_argument("--n", type=int, default=2048, help="simulated images per box")
    p.add_argument("--n-large", type=int, default=0, help="also train the fast preset on the stack listed K times")
    p.add_argument("--no-sym-loss", action="store_true")
    p.add_argument("--radii", default=None, help="mask radii for box 64 (default 4,8,16,24,32); others: D/2 only")
    p.add_argument("--before", default=str(BEFORE) if BEFORE.is_file() else None)
    p.add_argument("--worker", nargs=3, metavar=("PARTICLES", "CTF", "BOX"), help=argparse.SUPPRESS)
    p.add_argument("--worker-radii", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker-preset", default="fast", help=argparse.SUPPRESS)
    p.add_argument("--worker-flags", default="pose_only,infer", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_main(args: argparse.Namespace) -> int:
    """Worker process: measure, print "RESULT <json>" on stdout for the parent."""
    radii = [int(v) for v in args.worker_radii.split(",")]
    flags = args.worker_flags.split(",")
    ctf = None if args.worker[1] == "-" else args.worker[1]
    res = worker(args.worker[0], ctf, int(args.worker[2]), args.batch, args.steps, args.threads, args.device,
                 radii, not args.no_sym_loss, args.seconds, args.worker_preset, args.precision, args.compile,
                 "pose_only" in flags, "infer" in flags)
    print("RESULT " + json.dumps(res))
    return 0


def run_worker(args: argparse.Namespace, results: list[dict], particles, ctf, box: int, radii: str, batch: int,
               preset: str, flags: str) -> bool:
    """Run one worker process (radii: comma-separated px; flags: "pose_only", "infer", comma-separated) and append
    its result to `results`; on failure print the end of its output to stderr and return False."""
    cmd = [sys.executable, __file__, "--worker", str(particles), str(ctf or "-"), str(box), "--worker-radii",
           radii, "--worker-preset", preset, "--worker-flags", flags, "--batch", str(batch),
           "--seconds", str(args.seconds), "--steps", str(args.steps), "--threads", str(args.threads),
           "--device", args.device, "--precision", args.precision] + \
        (["--no-sym-loss"] if args.no_sym_loss else []) + (["--compile"] if args.compile else [])
    print(f"box {box} {preset}: radii {radii} ({flags or 'train only'}) ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        return False
    results.append(json.loads(line[0][len("RESULT "):]))
    return True


def run_box(args: argparse.Namespace, results: list[dict], box: int, presets: list[str], tmp: Path) -> bool:
    """Simulate --n images at `box` (px) under `tmp` and run every preset's worker on them, then (--n-large K) the
    fast preset on the stack listed K times at the full radius only. False as soon as a worker fails."""
    star = _simulate(tmp / f"sim{box}", args.n, box)
    full = str(box // 2)
    radii = (args.radii or "4,8,16,24,32") if box == 64 else full
    batch = max(8, int(args.batch * (64 / box) ** 2))
    for preset in presets:
        if preset == "original":   # ~0.4 s/image at the full radius: two radii, for the ratio
            r = ",".join(sorted({radii.split(",")[min(1, len(radii.split(",")) - 1)], full}, key=int))
            ok = run_worker(args, results, star, None, box, r, batch, preset, "infer")
        else:
            ok = run_worker(args, results, star, None, box, radii, batch, preset, "pose_only,infer")
        if not ok:
            return False
    if args.n_large > 1 and "fast" in presets:
        txt, ctf = long_stack(star, args.n_large)
        if not run_worker(args, results, txt, ctf, box, full, batch, "fast", ""):
            return False
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    load0 = os.getloadavg()
    boxes = [int(b) for b in args.boxes.split(",")]
    presets = [s for s in args.presets.split(",") if s]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for box in boxes:
            if not run_box(args, results, box, presets, Path(tmp)):
                return 1
    now = dt.datetime.now(dt.timezone.utc)
    before = json.loads(Path(args.before).read_text()) if args.before and Path(args.before).is_file() else None
    write_results(results, run_meta(args, now, load0, before), before, now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
