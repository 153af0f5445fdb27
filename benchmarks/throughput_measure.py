"""The worker side of throughput.py: one preset's training steps, their split, inference, FLOPs and memory."""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path


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

    from cryofire_app.training.schedule import mask_radius_at

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
