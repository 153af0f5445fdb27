"""The results of throughput.py: the run's meta, the markdown tables, the files."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
