"""Side-by-side cost of cryoDRGN 4.3.1 and cryofire on the same simulated set (issue 6, "side-by-side mode").

Steps (each cryoDRGN / cryofire process is timed and its peak memory recorded):
  1. a private venv (default benchmarks/.venv-cryodrgn, gitignored) with torch==2.13.0 then cryodrgn==4.3.1 from PyPI
     (cryodrgn 4.3.1 asks for torch>=2, so the torch wheel already on this machine satisfies it);
  2. issue 5/6's set simulated by `cryofire simulate` (same call as benchmarks/abinit_seed.py make_data: N images,
     box 64, SNR 0.1, two hinge states 90/10, CTF 1-2.5 um, shifts <= 4 px, seed 0); particles.mrcs, ctf.pkl and
     poses.pkl are then read back with cryoDRGN's own loaders inside the venv and compared with ours;
  3. cryoDRGN, bounded: `cryodrgn abinit` (a) with its default pose search on the first --hps-images images (one
     pose-search epoch: cost per image of the hierarchical pose search, HPS) and (b) on the first --sgd-images
     images with --epochs-pose-search 0, to time its pretraining and its SGD (pose-table) epochs at their defaults;
     and `cryodrgn train_vae` with the true poses, one epoch on --vae-images images, 1024-wide (default) and
     256-wide networks;
  4. cryofire on the same files: `cryofire train` with the default seeded schedule (short: the full seed, then
     --ours-images images of distill + joint; or --ours full: to completion; or --ours reuse: the seed's numbers from
     benchmarks/results/abinit_seed.json and the step cost from benchmarks/throughput.py), `cryofire infer`
     (encoder-only, all N images) and `cryofire eval` against the simulation ground truth;
  5. a table of ratios, written to benchmarks/results/cryodrgn_compare-<date>-<host>.json and .md.

Per-image costs come from each program's own log (epoch or phase wall times, progress-line timestamps), not from
process wall times, which hold imports and start-up. Full-schedule projections (seconds, N images):
  cryoDRGN abinit (defaults: 30 epochs, 3 of them pose search, pretraining on min(N, 10000) images):
      T = o_pretrain + min(N, 10000) * t_pretrain + 3 * N * t_hps + (30 - 3) * (o_sgd + N * t_sgd)
      t_pretrain, t_sgd: steady s/image from the in-epoch progress lines; o_*: the rest of the epoch (start-up);
      t_hps: the whole pose-search epoch / its images. The per-epoch summaries (volume, pose dumps) are left out.
  cryoDRGN train_vae (known poses only; 20 epochs): T = 20 * N * t_epoch_image
  cryofire seeded (default 20 passes over the training split n_train = N - min(256, 0.05 N); distill fraction f=0.6):
      T = T_seed + f * 20 * n_train * t_distill + (1 - f) * 20 * n_train * t_joint + T_final_pass
Peak memory: ru_maxrss of the process tree (largest single process, from wait4) and the largest sum of the RSS of the
process and its children sampled every 0.2 s (cryoDRGN's data-loader workers are separate processes).

    OMP_NUM_THREADS=2 python benchmarks/cryodrgn_compare.py [--n 5000] [--box 64] [--hps-images 16] [--ours short]
        [--venv PATH] [--device cpu|cuda] [--workdir DIR] [--skip-install]

Needs PyPI access (step 1); with the defaults it took 38 min on 2 cores at load average 5-8 (other jobs). Not part
of the test suite (only its pure helpers are: tests/test_cryodrgn_compare_helpers.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cryodrgn_costs import (  # noqa: E402,F401  (re-exported: tests/test_cryodrgn_compare_helpers.py)
    VAE_DEFAULT_EPOCHS,
    AbinitDefaults,
    n_train_split,
    parse_epoch_times,
    phase_rates,
    project_abinit,
    project_seeded,
    ratio,
    steady_rates,
)
from cryodrgn_report import atomic_write, standard_notes, summary_rows, table_markdown, write_results  # noqa: E402
from cryodrgn_runs import (  # noqa: E402
    REPO,
    TORCH,
    Measured,
    abinit_projection,
    check_cryodrgn_loaders,
    child_env,
    cryodrgn_runs,
    ensure_venv,
    export_head,
    ours_runs,
    sgd_record,
    simulate,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="simulated images (default 5000)")
    p.add_argument("--box", type=int, default=64, help="box in pixels (default 64)")
    p.add_argument("--sim-seed", type=int, default=0)
    p.add_argument("--hps-images", type=int, default=16,
                   help="images of cryoDRGN abinit's pose-search epoch (default 16: one batch, its default size)")
    p.add_argument("--sgd-images", type=int, default=384,
                   help="images of cryoDRGN abinit's pretrain and SGD epochs (default 384: 6 and 3 batches)")
    p.add_argument("--vae-images", type=int, default=128, help="images of the train_vae epochs (default 128)")
    p.add_argument("--subset", default=None,
                   help="shorthand HPS,SGD,VAE image counts, e.g. 16,256,128 (overrides the three above)")
    p.add_argument("--ours", choices=("short", "full", "reuse"), default="short",
                   help="short: full seed + --ours-images of distill/joint, projected to the default schedule; "
                        "full: `cryofire train` to completion; reuse: seed from results/abinit_seed.json, step cost "
                        "from benchmarks/throughput.py")
    p.add_argument("--ours-images", type=int, default=3000,
                   help="short mode: training images after the seed (default 3000: 60%% distill, 40%% joint)")
    p.add_argument("--skip-cryodrgn", action="store_true", help="only our side (e.g. no PyPI access)")
    p.add_argument("--skip-install", action="store_true", help="use --venv as it is")
    p.add_argument("--torch-spec", default=TORCH,
                   help=f"torch requirement installed into the venv before cryodrgn (default {TORCH}, the CPU wheel "
                        "on this machine's disk; give a CUDA build's spec on a GPU machine)")
    p.add_argument("--venv", type=Path, default=HERE / ".venv-cryodrgn")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS / torch threads of every process")
    p.add_argument("--workdir", type=Path, default=HERE / "work" / "cryodrgn_compare",
                   help="data and runs (default benchmarks/work/cryodrgn_compare, gitignored)")
    p.add_argument("--tag", default=None, help="results file stem (default cryodrgn_compare-<date>-<host>)")
    p.add_argument("--code", choices=("head", "tree"), default="head",
                   help="cryofire code measured: head (default) = this repo's committed HEAD exported with `git "
                        "archive` into WORKDIR/code-<commit> and put first on PYTHONPATH (uncommitted edits in the "
                        "shared work tree are left out); tree = the installed package as it is")
    p.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                   help="re-derive the numbers from an earlier run's JSON and kept logs, rewrite results/<its "
                        "stem>.json and .md, print the table; runs nothing")
    a = p.parse_args(argv)
    if a.subset:
        parts = a.subset.split(",")
        if len(parts) != 3 or not all(x.strip().isdigit() and int(x) > 0 for x in parts):
            p.error(f"--subset wants three positive integers HPS,SGD,VAE, got {a.subset!r}")
        a.hps_images, a.sgd_images, a.vae_images = (int(x) for x in parts)
    if a.box % 2 or a.box < 16:
        p.error(f"--box must be even and >= 16, got {a.box}")
    for name in ("hps_images", "sgd_images", "vae_images"):
        v = getattr(a, name)
        if v < 1 or v > a.n:
            p.error(f"--{name.replace('_', '-')} must be in [1, --n={a.n}], got {v}")
    return a


def rewrite_report(path: Path) -> None:
    """--report-only: re-derive cryoDRGN's pretrain/SGD costs from the kept log (if it is still there), refresh the
    notes, rewrite results/<path's stem>.json and .md and print the table; runs nothing."""
    res = json.loads(path.read_text())
    c = res.get("cryodrgn") or {}
    if "abinit_sgd" in c and Path(c["abinit_sgd"]["log"]).exists():
        # re-derive the pretrain/SGD costs from the kept stdout log (same function as a live run)
        c["abinit_sgd"] = sgd_record({k: v for k, v in c["abinit_sgd"].items() if k in Measured.__annotations__},
                                     c["abinit_sgd"]["images"])
        c["abinit_projection"] = abinit_projection(res["args"]["n"], c["abinit_hps"], c["abinit_sgd"])
    res["notes"] = standard_notes(res["machine"]["threads"], res["machine"]["cpu_count"], res.get("total_wall_s"))
    res["report_rewritten"] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC (--report-only)"
    jp, mp = write_results(res, path.stem)
    print("\n".join(table_markdown(summary_rows(res))))
    print(f"rewrote {mp}")


def new_results(a: argparse.Namespace) -> tuple[dict, str]:
    """The results dict before any run (UTC date, short host name, options, cores, threads, load average) and the
    results file stem (--tag, else cryodrgn_compare-<date>-<host>)."""
    now = dt.datetime.now(dt.timezone.utc)
    host = socket.gethostname().split(".")[0] or "host"
    stem = a.tag or f"cryodrgn_compare-{now:%Y%m%d-%H%M}-{host}"
    res: dict = {"date": f"{now:%Y-%m-%d %H:%M} UTC", "host": host, "args": {k: str(v) if isinstance(v, Path) else v
                                                                             for k, v in vars(a).items()},
                 "machine": {"cpu_count": os.cpu_count(), "threads": a.threads, "platform": platform.platform(),
                             "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg())},
                 "notes": []}
    return res, stem


def select_code(a: argparse.Namespace, res: dict, env: dict[str, str], work: Path) -> None:
    """Choose the cryofire code the child processes run (--code head: HEAD exported under `work`, first on env's
    PYTHONPATH and on sys.path; tree: this repo as installed), record it in res["code"] with where it is really
    imported from, and fail if --code head is not what gets imported."""
    if a.code == "head":
        res["code"] = export_head(work)
        sys.path.insert(0, res["code"]["path"])
        env["PYTHONPATH"] = os.pathsep.join([res["code"]["path"]] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                    else []))
    else:
        res["code"] = {"commit": "work tree", "path": str(REPO)}
    # where the console scripts (sys.path[0] = the venv's bin) import cryofire_app from; cwd=work keeps the repo's
    # own folder off sys.path, as for `cryofire ...`
    where = subprocess.run([sys.executable, "-c", "import cryofire_app; print(cryofire_app.__file__)"], env=env,
                           cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    if a.code == "head" and not where.startswith(res["code"]["path"]):
        raise RuntimeError(f"the exported code is not the one imported ({where}); PYTHONPATH is ignored here")
    res["code"]["imported_from"] = where
    print(f"    cryofire code: {res['code']['commit']} ({where})", flush=True)


def cryodrgn_side(a: argparse.Namespace, res: dict, data: Path, work: Path, env: dict[str, str]) -> None:
    """Step 3: check cryoDRGN's loaders read our files alike, run its bounded jobs (GPU hidden for --device cpu)
    into res["cryodrgn"], and save the results so far to work/partial.json."""
    py = a.venv / "bin" / "python"
    res["loaders"] = check_cryodrgn_loaders(py, data, a.n, a.box, env)
    print(f"    cryoDRGN loaders agree with ours: {res['loaders']}", flush=True)
    print("[3] cryoDRGN (bounded runs)", flush=True)
    # cryoDRGN takes a GPU whenever it sees one: hide it for --device cpu
    cenv = dict(env, CUDA_VISIBLE_DEVICES="") if a.device == "cpu" else env
    res["cryodrgn"] = cryodrgn_runs(a, py, data, work, cenv)
    atomic_write(work / "partial.json", json.dumps(res, indent=1, default=float) + "\n")


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.report_only is not None:
        rewrite_report(a.report_only)
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    env = child_env(a.threads)
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    t_start = time.perf_counter()
    res, stem = new_results(a)
    if not a.skip_cryodrgn:
        print("[1] cryoDRGN venv", flush=True)
        res["venv"] = ensure_venv(a.venv, a.skip_install, env, work / "logs", a.torch_spec)
        print(f"    {res['venv']}", flush=True)
    select_code(a, res, env, work)
    print("[2] simulate", flush=True)
    res["data"] = simulate(data, a.n, a.box, a.sim_seed, env, work / "logs")
    if not a.skip_cryodrgn:
        cryodrgn_side(a, res, data, work, env)
    print("[4] cryofire", flush=True)
    res["ours"] = ours_runs(a, data, work, env)
    res["machine"]["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    res["total_wall_s"] = time.perf_counter() - t_start
    res["notes"] = standard_notes(a.threads, os.cpu_count(), res["total_wall_s"])
    jp, mp = write_results(res, stem)
    print("\n".join(table_markdown(summary_rows(res))))
    print(f"wrote {jp} and {mp} ({res['total_wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
