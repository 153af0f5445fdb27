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
BEFORE = RESULTS / "baseline" / "throughput-20261124-0532-vm.json"  # the original model, before issue 6
PRESETS = ("fast", "original")
sys.path.insert(0, str(HERE))
from scale import long_stack  # noqa: E402  (a stack listed k times: k times the particles, no new pixels)


def matmul_gflops(device: str = "cpu", n: int = 2048, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def memory_mb() -> dict:
    """Current RssAnon/RssFile and peak VmHWM of this process (MB), from /proc/self/status (Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024
    except OSError:
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _simulate(outdir: Path, n: int, box: int) -> Path:
    from cryofire_app.simulate import demo_config, simulate

    cfg = demo_config(outdir, n=n, box=box, snr=0.1)
    cfg.overwrite = True
    simulate(cfg)
    return outdir / "particles.star"


def _steps(gen, n_steps: int, device: str, flops: bool = False, seconds: float | None = None):
    """Advance the trainer generator by up to n_steps Step events (at least 3, stopping once `seconds` have passed);
    returns (wall seconds per step, process CPU seconds per step (all threads), flops of the first timed step)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cryofire_app.training.events import Failed, Step

    times, cpu, fl = [], [], None
    start = time.perf_counter()
    while len(times) < n_steps:
        if seconds is not None and len(times) >= 3 and time.perf_counter() - start > seconds:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        if flops and fl is None:
            with FlopCounterMode(display=False) as fc:
                ev = next(gen)
            if isinstance(ev, Step):
                fl = fc.get_total_flops()
        else:
            ev = next(gen)
        _sync(device)
        if isinstance(ev, Failed):
            raise RuntimeError(ev.message)
        if isinstance(ev, Step):
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return times, cpu, fl


def preset_config(preset: str, **kw):
    from cryofire_app.training.config import TrainConfig

    cfg = TrainConfig.of(**kw)
    if preset == "fast":
        cfg.decoder.arch = "grid"
        cfg.encoder.stem = "unshuffle"
        cfg.channels_last = True
    elif preset == "original":
        cfg.channels_last = False
    else:
        raise ValueError(f"unknown preset {preset!r}")
    return cfg


def components(tr, batch_pos, device: str, reps: int = 3) -> dict:
    """ms/image of the parts of one joint step at the trainer's current radius (median of `reps`)."""
    import numpy as np

    from cryofire_app.training.trainer import mask_radius_at

    model, cfg = tr.model, tr.config
    mp = tr.mask(mask_radius_at(cfg, tr.D, tr.images_seen))
    n = len(batch_pos)
    parts = {"data": [], "encoder": [], "decoder_physics": [], "optimizer": []}
    for _ in range(reps):
        t0 = time.perf_counter()
        b = tr.data.load(batch_pos)
        parts["data"].append(time.perf_counter() - t0)
        y, Y = b.y_real.to(device), b.Y.to(device)
        ctf = b.ctf.to(device) if b.ctf is not None else None
        model.train()
        tr.optim.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        with tr.amp.autocast():
            enc = model.encode_branches(y, sym=tr.sym)
        sum(v.float().square().sum() for v in enc.values()).backward()
        _sync(device)
        parts["encoder"].append(time.perf_counter() - t0)
        encd = {k: v.detach().requires_grad_(True) for k, v in enc.items()}
        t0 = time.perf_counter()
        with tr.amp.autocast():
            err = model.branch_errors(Y, ctf, encd, encd["z_mu"], mp, sym=tr.sym)
        err.min(0).values.mean().backward()
        _sync(device)
        parts["decoder_physics"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tr.optim.step()
        _sync(device)
        parts["optimizer"].append(time.perf_counter() - t0)
    tr.optim.zero_grad(set_to_none=True)
    return {k: 1e3 * float(np.median(v)) / n for k, v in parts.items()}


def phase_config(preset: str, phase: str, radius: int, outdir: str, particles: str, ctf: str | None, batch: int,
                 steps: int, device: str, threads: int, sym: bool, precision: str, compile_: bool):
    """TrainConfig that trains in `phase` ("joint" or "pose_only") at a fixed mask radius (px) for long enough to
    time `steps` steps after 3 warm-up steps, with checkpoints, latents, the contrast check and radius growth off."""
    return preset_config(preset, particles=particles, ctf=ctf, outdir=outdir, zdim=8,
                         batch_size=batch, num_images=batch * (steps + 3) * 4,
                         pose_only_images=10 ** 12 if phase == "pose_only" else 0, freq_start=radius,
                         freq_add_every=10 ** 12, freq_max=radius, checkpoint_every=10 ** 12,
                         latents_every=10 ** 12, contrast_check_images=10 ** 12, device=device,
                         num_threads=threads, sym_loss=sym, invert_data="no", schedule="amortized",
                         precision=precision, compile=compile_)


def time_phase(gen, phase: str, radius: int, batch: int, steps: int, device: str, seconds: float, flops: bool,
               matmul: float) -> dict:
    """One results["train"] entry: median wall and CPU ms/image of the timed steps (the first dropped when there
    are more than 2), FLOPs per image of one step, GFLOP/s and that as a fraction of `matmul` (GFLOP/s)."""
    import numpy as np

    _steps(gen, 3, device)  # warm-up (setup, allocator, first batches, compilation)
    times, cpu, fl = _steps(gen, steps, device, flops=flops, seconds=seconds)
    t = float(np.median(times[1:])) if len(times) > 2 else float(np.median(times))
    c = float(np.median(cpu[1:])) if len(cpu) > 2 else float(np.median(cpu))
    entry = {"phase": phase, "radius": radius, "steps_timed": len(times), "ms_per_image": 1e3 * t / batch,
             "cpu_ms_per_image": 1e3 * c / batch, "flops_per_image": (fl or 0) / batch}
    entry["gflops"] = (fl or 0) / t / 1e9 if fl else None
    entry["fraction_of_matmul"] = entry["gflops"] / matmul if fl else None
    return entry


def time_inference(tr, device: str, sym: bool, precision: str) -> dict:
    """Encoder-only inference (`predict(select="encoder")`, data loading included) of up to 2048 images after a
    256-image warm-up: ms and CPU ms per image, images per s and per CPU-s, FLOPs per image (counted in fp32 on 256
    images) and GFLOP/s."""
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from cryofire_app.training.inference import predict

    data, model = tr.data, tr.model
    pos = np.arange(min(data.N, 2048))
    predict(model, data, pos[:256], select="encoder", batch=256, device=device, sym=sym, precision=precision)
    with FlopCounterMode(display=False) as fc:
        predict(model, data, pos[:256], select="encoder", batch=256, device=device, sym=sym)
    enc_flops = fc.get_total_flops() / 256
    t0, c0 = time.perf_counter(), time.process_time()
    predict(model, data, pos, select="encoder", batch=256, device=device, sym=sym, precision=precision)
    ti, ci = time.perf_counter() - t0, time.process_time() - c0
    return {"images": int(len(pos)), "ms_per_image": 1e3 * ti / len(pos), "images_per_s": len(pos) / ti,
            "cpu_ms_per_image": 1e3 * ci / len(pos), "images_per_cpu_s": len(pos) / ci, "flops_per_image": enc_flops,
            "gflops": enc_flops * len(pos) / ti / 1e9}


def worker(particles: str, ctf: str | None, box: int, batch: int, steps: int, threads: int, device: str,
           radii: list[int], sym: bool, seconds: float, preset: str, precision: str, compile_: bool,
           pose_only: bool, infer: bool) -> dict:
    """Measure one preset on one stack (in its own process, so that peak RSS is this configuration's): a fresh
    Trainer per joint radius (px; the last is the full one, where the step is also split into components and
    inference is timed) and, with pose_only, one in the pose-only phase at the last radius. Returns the result
    dict printed after "RESULT " (memory in MB)."""
    import torch

    from cryofire_app.training.trainer import Trainer

    torch.set_num_threads(threads)
    res: dict = {"box": box, "batch": batch, "threads": threads, "device": device, "sym_loss": sym,
                 "preset": preset, "precision": precision, "compile": compile_, "particles": particles,
                 "matmul_gflops": matmul_gflops(device), "train": []}
    anon = [memory_mb().get("RssAnon", 0.0)]   # sampled between measurements (after a step's activations are freed)
    phases = [("joint", r) for r in radii] + ([("pose_only", radii[-1])] if pose_only else [])
    for phase, r in phases:
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(phase_config(preset, phase, r, str(Path(tmp) / "run"), particles, ctf, batch, steps, device,
                                      threads, sym, precision, compile_))
            gen = tr.run()
            entry = time_phase(gen, phase, r, batch, steps, device, seconds, not compile_, res["matmul_gflops"])
            full_joint = phase == "joint" and r == radii[-1]
            if full_joint:
                entry["components_ms_per_image"] = components(tr, tr.train_pos[:batch], device)
            res["train"].append(entry)
            anon.append(memory_mb().get("RssAnon", 0.0))
            if infer and full_joint:
                res["infer"] = time_inference(tr, device, sym, precision)
                anon.append(memory_mb().get("RssAnon", 0.0))
            res["n_particles"] = int(tr.data.N)
            gen.close()
    mem = memory_mb()
    res["peak_rss_mb"] = mem.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    res["max_rss_anon_mb"] = max(anon)
    res["rss_file_mb_end"] = mem.get("RssFile")
    return res


def _fmt(v, f="{:.2f}"):
    return "-" if v is None else f.format(v)


def markdown(results: list[dict], meta: dict, before: dict | None) -> str:
    bt = {}
    if before:
        for r in before.get("results", []):
            for t in r.get("train", []):
                bt[(r["box"], t.get("phase", "joint"), t["radius"])] = t
            bt[(r["box"], "infer")] = r.get("infer", {})
            bt[(r["box"], "rss")] = r.get("peak_rss_mb")
    la = meta.get("loadavg_start"), meta.get("loadavg_end")
    lines = [f"# Throughput ({meta['date']}, {meta['host']}, {meta['cpu']}, torch {meta['torch']}, "
             f"{meta['threads']} threads, device {meta['device']}, precision {meta['precision']})", "",
             f"Load average (1/5/15 min) at start {la[0]}, at end {la[1]} on {meta['ncpu']} cores (shared machine: "
             "compare presets within this run)." + (f" Before: {meta['before']}." if before else ""), "",
             "ms/image is wall time (median step); CPU ms/image is the process's CPU time over all threads (less "
             "sensitive to other jobs; divide by the thread count for the wall time of an idle machine).", "",
             "| box | preset | phase | radius (px) | ms/image | CPU ms/image | before ms/image | MFLOP/image | GFLOP/s "
             "| % of matmul |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for t in r["train"]:
            b = bt.get((r["box"], t["phase"], t["radius"]), {}).get("ms_per_image")
            frac = None if t["fraction_of_matmul"] is None else 100 * t["fraction_of_matmul"]
            lines.append(f"| {r['box']} | {r['preset']} | {t['phase']} | {t['radius']} | {t['ms_per_image']:.2f} | "
                         f"{_fmt(t.get('cpu_ms_per_image'))} | {_fmt(b)} | {t['flops_per_image'] / 1e6:.1f} | {_fmt(t['gflops'], '{:.1f}')} | "  # noqa: E501 (a table row)
                         f"{_fmt(frac, '{:.0f}')} |")
    lines += ["", "Split of one joint step at the full radius (ms/image; data = loading one batch in one thread, "
              "overlapped with compute by the prefetcher during training):", "",
              "| box | preset | N | radius (px) | data | encoder fwd+bwd | decoder+physics fwd+bwd | optimizer |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for t in r["train"]:
            c = t.get("components_ms_per_image")
            if c:
                lines.append(f"| {r['box']} | {r['preset']} | {r.get('n_particles', '-')} | {t['radius']} | "
                             f"{c['data']:.2f} | {c['encoder']:.2f} | {c['decoder_physics']:.2f} | "
                             f"{c['optimizer']:.2f} |")
    lines += ["", "| box | preset | N | inference images/s | images per CPU-s | before images/s | MFLOP/image | GFLOP/s | matmul GFLOP/s | "  # noqa: E501 (a table row)
              "peak RSS (MB) | before peak RSS | anon RSS between steps (MB) | file RSS at end (MB) |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        i = r.get("infer") or {}
        bi = bt.get((r["box"], "infer")) or {}
        lines.append(f"| {r['box']} | {r['preset']} | {r.get('n_particles', '-')} | {_fmt(i.get('images_per_s'), '{:.0f}')} | "  # noqa: E501 (a table row)
                     f"{_fmt(i.get('images_per_cpu_s'), '{:.0f}')} | "
                     f"{_fmt(bi.get('images_per_s'), '{:.0f}')} | {_fmt(i.get('flops_per_image', 0) / 1e6, '{:.1f}')} | "  # noqa: E501 (a table row)
                     f"{_fmt(i.get('gflops'), '{:.1f}')} | {r['matmul_gflops']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{_fmt(bt.get((r['box'], 'rss')), '{:.0f}')} | {r['max_rss_anon_mb']:.0f} | "
                     f"{_fmt(r.get('rss_file_mb_end'), '{:.0f}')} |")
    lines += ["", "Memory: peak RSS = VmHWM of the worker (anonymous + file-backed pages, incl. the memory-mapped "
              "stack and torch's libraries); anon RSS between steps = the largest RssAnon sampled after each "
              "measurement, i.e. without a step's transient activations; file RSS = RssFile at the end (libraries + "
              "mapped stack pages).", "", "FLOPs: matmul/conv FLOPs of forward + backward counted by torch.utils.flop_counter (FFTs, grid "  # noqa: E501 (a table row)
              "sampling and elementwise ops excluded). Symmetric loss "
              f"{'on' if results and results[0]['sym_loss'] else 'off'}; inference is encoder-only with data loading. "
              "Presets: see the script's docstring."]
    return "\n".join(lines) + "\n"


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


def run_meta(args: argparse.Namespace, now: dt.datetime, load0, before: dict | None) -> dict:
    """The results file's "meta": UTC date, host, CPU, torch version, options, cores, load averages (1/5/15 min) at
    the start (load0) and now, and the --before file's name if it was read."""
    import torch

    return {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "host": socket.gethostname(), "cpu": platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": args.threads, "device": args.device,
            "precision": args.precision, "compile": args.compile, "ncpu": os.cpu_count(),
            "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "before": Path(args.before).name if before else None}


def write_results(results: list[dict], meta: dict, before: dict | None, now: dt.datetime) -> None:
    """Write results/throughput-<date>-<host>.json and .md, print the markdown (stdout) and the paths (stderr)."""
    from cryofire_app.training.checkpoint import atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"throughput-{now.strftime('%Y%m%d-%H%M')}-{socket.gethostname()}"
    md = markdown(results, meta, before)
    atomic_write_text(Path(f"{stem}.json"), json.dumps({"meta": meta, "results": results, "before": before}, indent=1))
    atomic_write_text(Path(f"{stem}.md"), md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)


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
