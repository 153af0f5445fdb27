"""Throughput benchmark: cost per image of a training step and of encoder-only inference, FLOPs, GFLOP/s, peak RSS.

For each box size (default 64 and 128) a small dataset is simulated from the bundled map, then a worker process
(so that peak RSS is per configuration) builds the real Trainer and measures:
  - training step, ms/image, at several frequency-mask radii (the frequency-marching schedule) incl. the full D/2,
    in the joint phase (z used) with the symmetric loss as configured (default on);
  - FLOPs per image of one training step (forward + backward; matmul/conv FLOPs counted by torch's FlopCounterMode,
    FFTs and elementwise ops not counted) and the achieved GFLOP/s;
  - encoder-only inference (no decoder call), ms/image and images/s;
  - a plain fp32 matmul (2048^2) in the same process: the machine's practical GFLOP/s ceiling;
  - peak RSS of the worker (MB).
Results: benchmarks/results/throughput-<date>-<host>.json and .md (a markdown table), also printed.

usage:  python benchmarks/throughput.py [--boxes 64,128] [--batch 64] [--steps 20] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def matmul_gflops(device: str = "cpu", n: int = 2048, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def _simulate(outdir: Path, n: int, box: int) -> Path:
    from cryofire_app.simulate import demo_config, simulate

    cfg = demo_config(outdir, n=n, box=box, snr=0.1)
    cfg.overwrite = True
    simulate(cfg)
    return outdir / "particles.star"


def _steps(trainer, gen, n_steps: int, flops: bool = False, seconds: float | None = None):
    """Advance the trainer generator by up to n_steps Step events (at least 3, and stopping once ``seconds`` have
    passed); returns (seconds per step list, flops of the first)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cryofire_app.training.events import Failed, Step

    times, fl = [], None
    start = time.perf_counter()
    while len(times) < n_steps:
        if seconds is not None and len(times) >= 3 and time.perf_counter() - start > seconds:
            break
        t0 = time.perf_counter()
        if flops and fl is None:
            with FlopCounterMode(display=False) as fc:
                ev = next(gen)
            if isinstance(ev, Step):
                fl = fc.get_total_flops()
        else:
            ev = next(gen)
        if isinstance(ev, Failed):
            raise RuntimeError(ev.message)
        if isinstance(ev, Step):
            times.append(time.perf_counter() - t0)
    return times, fl


def worker(particles: str, box: int, batch: int, steps: int, threads: int, device: str, radii: list[int],
           sym: bool, seconds: float) -> dict:
    import numpy as np
    import torch

    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.inference import predict
    from cryofire_app.training.trainer import Trainer

    torch.set_num_threads(threads)
    res: dict = {"box": box, "batch": batch, "threads": threads, "device": device, "sym_loss": sym,
                 "matmul_gflops": matmul_gflops(device)}
    res["train"] = []
    for r in radii:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(particles=particles, outdir=str(Path(tmp) / "run"), zdim=8, batch_size=batch,
                              num_images=batch * (steps + 3) * 4, pose_only_images=0, freq_start=r,
                              freq_add_every=10 ** 12, freq_max=r, checkpoint_every=10 ** 12,
                              latents_every=10 ** 12, contrast_check_images=10 ** 12, device=device,
                              num_threads=threads, sym_loss=sym, invert_data="no")
            tr = Trainer(cfg)
            gen = tr.run()
            _steps(tr, gen, 3)  # warm-up (setup, allocator, first batches)
            times, fl = _steps(tr, gen, steps, flops=True, seconds=seconds)
            t = float(np.median(times[1:])) if len(times) > 2 else float(np.median(times))
            entry = {"radius": r, "steps_timed": len(times), "ms_per_image": 1e3 * t / batch,
                     "flops_per_image": (fl or 0) / batch}
            entry["gflops"] = (fl or 0) / t / 1e9 if fl else None
            entry["fraction_of_matmul"] = entry["gflops"] / res["matmul_gflops"] if fl else None
            res["train"].append(entry)
            if r == radii[-1]:
                data, model = tr.data, tr.model
                pos = np.arange(min(data.N, 2048))
                predict(model, data, pos[:batch], select="encoder", batch=256, device=device, sym=sym)
                with torch.utils.flop_counter.FlopCounterMode(display=False) as fc:
                    predict(model, data, pos[:256], select="encoder", batch=256, device=device, sym=sym)
                enc_flops = fc.get_total_flops() / 256
                t0 = time.perf_counter()
                predict(model, data, pos, select="encoder", batch=256, device=device, sym=sym)
                ti = time.perf_counter() - t0
                res["infer"] = {"images": int(len(pos)), "ms_per_image": 1e3 * ti / len(pos),
                                "images_per_s": len(pos) / ti, "flops_per_image": enc_flops,
                                "gflops": enc_flops * len(pos) / ti / 1e9}
            gen.close()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# Throughput ({meta['date']}, {meta['host']}, {meta['cpu']}, torch {meta['torch']}, "
             f"{meta['threads']} threads)", "",
             "| box | batch | radius (px) | train ms/image | train MFLOP/image | train GFLOP/s | % of matmul |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for t in r["train"]:
            g = "-" if t["gflops"] is None else f"{t['gflops']:.1f}"
            f = "-" if t["fraction_of_matmul"] is None else f"{100 * t['fraction_of_matmul']:.0f}"
            lines.append(f"| {r['box']} | {r['batch']} | {t['radius']} | {t['ms_per_image']:.2f} | "
                         f"{t['flops_per_image'] / 1e6:.1f} | {g} | {f} |")
    lines += ["", "| box | inference ms/image | images/s | MFLOP/image | GFLOP/s | matmul GFLOP/s | peak RSS (MB) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        i = r.get("infer", {})
        lines.append(f"| {r['box']} | {i.get('ms_per_image', float('nan')):.3f} | {i.get('images_per_s', 0):.0f} | "
                     f"{i.get('flops_per_image', 0) / 1e6:.1f} | {i.get('gflops', 0):.1f} | "
                     f"{r['matmul_gflops']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "FLOPs: matmul/conv FLOPs of forward + backward counted by torch.utils.flop_counter (FFTs and "
              "elementwise ops excluded). Training steps in the joint phase, symmetric loss "
              f"{'on' if results and results[0]['sym_loss'] else 'off'}; inference is encoder-only."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", default="64,128")
    p.add_argument("--batch", type=int, default=64, help="batch at box 64; scaled by (64/box)^2 for other boxes so "
                                                          "that memory stays about constant (at least 8)")
    p.add_argument("--steps", type=int, default=12, help="timed training steps per radius (at most)")
    p.add_argument("--seconds", type=float, default=30.0, help="stop timing a radius after this long (>= 3 steps)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=2048, help="simulated images per box")
    p.add_argument("--no-sym-loss", action="store_true")
    p.add_argument("--radii", default=None, help="mask radii for box 64 (default 4,8,16,24,32); others: D/2 only")
    p.add_argument("--worker", nargs=2, metavar=("PARTICLES", "BOX"), help=argparse.SUPPRESS)
    p.add_argument("--worker-radii", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        radii = [int(v) for v in args.worker_radii.split(",")]
        res = worker(args.worker[0], int(args.worker[1]), args.batch, args.steps, args.threads, args.device, radii,
                     not args.no_sym_loss, args.seconds)
        print("RESULT " + json.dumps(res))
        return 0
    import torch

    boxes = [int(b) for b in args.boxes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for box in boxes:
            star = _simulate(Path(tmp) / f"sim{box}", args.n, box)
            if box == 64:
                radii = args.radii or "4,8,16,24,32"
            else:
                radii = str(box // 2)
            batch = max(8, int(args.batch * (64 / box) ** 2))
            cmd = [sys.executable, __file__, "--worker", str(star), str(box), "--worker-radii", radii,
                   "--batch", str(batch), "--seconds", str(args.seconds), "--steps", str(args.steps),
                   "--threads", str(args.threads),
                   "--device", args.device] + (["--no-sym-loss"] if args.no_sym_loss else [])
            print(f"box {box}: measuring radii {radii} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                return 1
            results.append(json.loads(line[0][len("RESULT "):]))
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "host": socket.gethostname(), "cpu": platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": args.threads, "device": args.device}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"throughput-{now.strftime('%Y%m%d-%H%M')}-{socket.gethostname()}"
    md = markdown(results, meta)
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    Path(f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
