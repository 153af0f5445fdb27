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
import math
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CRYODRGN = "cryodrgn==4.3.1"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk; cryodrgn 4.3.1 requires torch>=2


# ---------------------------------------------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class AbinitDefaults:
    """cryoDRGN 4.3.1 `abinit` schedule defaults (commands/abinit.py): epoch 0 pretrains on min(N, n_imgs_pretrain)
    images, epochs 1..epochs_pose_search run the hierarchical pose search on all N, the rest SGD on all N."""

    num_epochs: int = 30
    epochs_pose_search: int = 3
    n_imgs_pretrain: int = 10_000


VAE_DEFAULT_EPOCHS = 20  # cryoDRGN 4.3.1 train_vae -n default


def project_abinit(n: int, t_pretrain: float, t_hps: float, t_sgd: float,
                   d: AbinitDefaults = AbinitDefaults(), o_pretrain: float = 0.0,
                   o_sgd: float = 0.0) -> dict[str, float]:
    """Seconds of cryoDRGN's default `abinit` schedule on n images from per-image costs (s/image) of its phases
    and fixed per-epoch overheads o_* (s: data-loader start-up, first batch)."""
    pre = o_pretrain + min(n, d.n_imgs_pretrain) * t_pretrain
    hps = d.epochs_pose_search * n * t_hps
    sgd = (d.num_epochs - d.epochs_pose_search) * (o_sgd + n * t_sgd)
    return {"pretrain_s": pre, "pose_search_s": hps, "sgd_s": sgd, "total_s": pre + hps + sgd}


def n_train_split(n: int, val_fraction: float = 0.05, val_max: int = 256) -> int:
    """Training-split size of `cryofire train` (validation: val_fraction of the particles, at most val_max)."""
    return n - min(val_max, int(round(n * val_fraction)))


def project_seeded(n: int, seed_s: float, t_distill: float, t_joint: float, final_pass_s: float,
                   passes: float = 20.0, distill_fraction: float = 0.6) -> dict[str, float]:
    """Seconds of cryofire's default seeded schedule on n particles (passes over the training split)."""
    total_images = passes * n_train_split(n)
    distill = distill_fraction * total_images * t_distill
    joint = (1 - distill_fraction) * total_images * t_joint
    return {"seed_s": seed_s, "distill_s": distill, "joint_s": joint, "final_pass_s": final_pass_s,
            "images_total": total_images, "total_s": seed_s + distill + joint + final_pass_s}


_EPOCH_RE = re.compile(r"=====> (?:(?P<kind>[\w ]+?) )?Epoch: (?P<epoch>\d+)\b.*?[Ff]inished in "
                       r"(?:(?P<days>\d+) days?, )?(?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")


def parse_epoch_times(log_text: str) -> dict[int, float]:
    """Epoch -> seconds from cryoDRGN `abinit` ("# =====> Pretrain Epoch: 0 finished in 0:00:16.2; ...") and
    `train_vae` ("# =====> Epoch: 1 Average gen loss = ...; Finished in 0:01:02.5") log lines."""
    out: dict[int, float] = {}
    for m in _EPOCH_RE.finditer(log_text):
        days = int(m["days"] or 0)
        out[int(m["epoch"])] = days * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])
    return out


_BATCH_RE = re.compile(r"\((?P<ts>\d{2}-\w{3}-\d{4} \d{2}:\d{2}:\d{2})\) # \[Train Epoch: (?P<epoch>\d+)/\d+\] "
                       r"\[(?P<count>\d+)/\d+ particles\]")


def steady_rates(log_text: str) -> dict[int, dict[str, float]]:
    """Steady per-image cost of each cryoDRGN `abinit` epoch from its in-epoch progress lines
    ("(24-Nov-2026 07:28:33) # [Train Epoch: 0/2] [64/384 particles]", written every --log-interval images):
    seconds per image between the first and the last line of the epoch (so the first batch, which includes the
    data-loader start-up, is left out). Timestamps have 1 s resolution; needs two lines at least."""
    pts: dict[int, list[tuple[float, int]]] = {}
    for m in _BATCH_RE.finditer(log_text):
        t = dt.datetime.strptime(m["ts"], "%d-%b-%Y %H:%M:%S").timestamp()
        pts.setdefault(int(m["epoch"]), []).append((t, int(m["count"])))
    out = {}
    for ep, pp in pts.items():
        if len(pp) >= 2 and pp[-1][1] > pp[0][1]:
            out[ep] = {"s_per_image": (pp[-1][0] - pp[0][0]) / (pp[-1][1] - pp[0][1]),
                       "images_timed": float(pp[-1][1] - pp[0][1]), "first_count": float(pp[0][1])}
    return out


def phase_rates(steps: list[dict]) -> dict[str, dict[str, float]]:
    """Per-phase cost from `cryofire train` Step events (log.jsonl dicts with phase, images_seen, elapsed_s):
    seconds per image between the first and the last Step of each image-consuming phase; "seed" gives its span."""
    by: dict[str, list[dict]] = {}
    for s in steps:
        by.setdefault(s["phase"], []).append(s)
    out: dict[str, dict[str, float]] = {}
    prev_end = 0.0
    for phase, ss in by.items():
        start, end = ss[0], ss[-1]
        if phase == "seed":
            out[phase] = {"seconds": end["elapsed_s"]}
        else:
            # the phase's first step is timed from the previous phase's last event
            imgs = end["images_seen"] - start["images_seen"]
            secs = end["elapsed_s"] - start["elapsed_s"]
            out[phase] = {"images": float(imgs), "seconds": secs, "s_per_image": secs / imgs if imgs > 0 else math.nan,
                          "first_elapsed_s": start["elapsed_s"], "prev_end_s": prev_end}
        prev_end = end["elapsed_s"]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


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


# ------------------------------------------------------------------------------------------------ process running
@dataclass
class Measured:
    cmd: list[str]
    wall_s: float
    returncode: int
    ru_maxrss_mb: float           # largest single process of the tree (wait4 rusage)
    tree_peak_rss_mb: float       # largest sampled sum of RSS over the process and its descendants
    log: str
    cpu_s: float = math.nan       # user + system CPU seconds of the tree (wait4 rusage)
    extra: dict = field(default_factory=dict)


def run_measured(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
                 check: bool = True) -> Measured:
    """Run cmd (stdout+stderr to log), timing it and sampling the RSS of its process tree."""
    import psutil

    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = [0.0]
    done = threading.Event()
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)

        def sample() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.is_set():
                total = 0
                try:
                    procs = [root] + root.children(recursive=True)
                except psutil.Error:
                    break
                for q in procs:
                    try:
                        total += q.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total / 2 ** 20)
                done.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = Measured([str(c) for c in cmd], wall, proc.returncode, ru.ru_maxrss / 1024, peak[0], str(log),
                 ru.ru_utime + ru.ru_stime)
    m.extra["cores_used"] = m.cpu_s / wall if wall > 0 else math.nan
    m.extra["load_at_end"] = round(os.getloadavg()[1], 2)  # 5-min load average when the process ended
    print(f"    {wall:.1f} s ({m.cpu_s:.0f} CPU s, {m.extra['cores_used']:.2f} cores on average), rc {m.returncode}, "
          f"peak RSS {m.ru_maxrss_mb:.0f} MB (tree {m.tree_peak_rss_mb:.0f} MB)", flush=True)
    if check and m.returncode != 0:
        tail = "".join(Path(log).read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"command failed (rc {m.returncode}), log {log}:\n{tail}")
    return m


def export_head(work: Path) -> dict:
    """Export cryofire_app at the repo's HEAD into work/code-<commit> (read-only on the repo); returns its record."""
    import io
    import tarfile

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "cryofire_app"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    dst = work / f"code-{commit[:12]}"
    if not (dst / "cryofire_app" / "__init__.py").exists():
        tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "cryofire_app"],
                             capture_output=True, check=True).stdout
        tmp = work / f".code-{commit[:12]}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            tf.extractall(tmp, filter="data")
        os.replace(tmp, dst)
    return {"commit": commit, "path": str(dst), "uncommitted_in_work_tree_left_out": dirty}


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


# -------------------------------------------------------------------------------------------------------- steps
def ensure_venv(venv: Path, skip_install: bool, env: dict[str, str], logdir: Path, torch_spec: str = TORCH) -> dict:
    """Create venv and install torch (CPU wheel on disk) then cryodrgn; returns versions and install time."""
    py = venv / "bin" / "python"
    t0 = time.perf_counter()
    if not py.exists():
        if skip_install:
            raise SystemExit(f"--skip-install given but {venv} has no python")
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    have = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('cryodrgn'))"],
                          capture_output=True, text=True)
    if not skip_install and (have.returncode != 0 or have.stdout.strip() != CRYODRGN.split("==")[1]):
        # torch first: cryodrgn's "torch>=2" is then satisfied by the local CPU wheel instead of a GB download
        run_measured([py, "-m", "pip", "install", torch_spec], logdir / "pip_torch.log", env)
        run_measured([py, "-m", "pip", "install", CRYODRGN], logdir / "pip_cryodrgn.log", env)
    ver = subprocess.run([str(py), "-c", "import importlib.metadata as m, torch, numpy;"
                          "print(m.version('cryodrgn'), torch.__version__, numpy.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    req = subprocess.run([str(py), "-c", "import importlib.metadata as m;"
                          "print([r for r in m.requires('cryodrgn') if r.startswith('torch')])"],
                         capture_output=True, text=True).stdout.strip()
    return {"venv": str(venv), "cryodrgn": ver[0], "torch": ver[1], "numpy": ver[2], "cryodrgn_torch_requirement": req,
            "install_or_check_s": time.perf_counter() - t0}


def simulate(data: Path, n: int, box: int, seed: int, env: dict[str, str], logdir: Path) -> dict:
    """`cryofire simulate` with benchmarks/abinit_seed.py make_data's settings (bit-identical output)."""
    from cryofire_app.simulate import DEMO_MAP, DEMO_MAP_APIX

    settings = data / "settings.json"
    if settings.exists() and (data / "poses.pkl").exists():
        s = json.loads(settings.read_text())
        if s.get("n") == n and s.get("box") == box and s.get("seed") == seed:
            print(f"reusing the simulation in {data}", flush=True)
            return {"reused": True, "settings": s}
    cmd = [Path(sys.executable).parent / "cryofire", "simulate", DEMO_MAP, "--apix", str(DEMO_MAP_APIX),
           "-o", data, "-n", str(n), "-D", str(box), "--snr", "0.1", "--fractions", "0.9,0.1", "--max-shift", "4",
           "--defocus", "1.0,2.5", "--hinge", "2", "--hinge-angle", "20", "--seed", str(seed), "--no-progress",
           "--overwrite"]
    m = run_measured(cmd, logdir / "simulate.log", env)
    return {"reused": False, "wall_s": m.wall_s, "settings": json.loads(settings.read_text())}


_CHECK_LOADERS = r"""
import json, sys, numpy as np, torch
from cryodrgn import ctf, utils
from cryodrgn.pose import PoseTracker
from cryodrgn.source import ImageSource
data, n, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src = ImageSource.from_file(data + "/particles.mrcs", lazy=True)
imgs = src.images(np.arange(8))
ctfp = ctf.load_ctf_for_training(D, data + "/ctf.pkl")
pt = PoseTracker.load(data + "/poses.pkl", n, D + 1)
rot, trans = pt.get_pose(torch.arange(8))
print(json.dumps({"n_images": src.n, "D": src.D, "first8": np.asarray(imgs).tolist(), "ctf_shape": list(ctfp.shape),
                  "ctf_first": ctfp[0].tolist(), "rot_first8": rot.numpy().tolist(),
                  "trans_first8": trans.numpy().tolist()}))
"""


def check_cryodrgn_loaders(py: Path, data: Path, n: int, box: int, env: dict[str, str]) -> dict:
    """Read the simulated files with cryoDRGN's ImageSource, load_ctf_for_training and PoseTracker.load (in the venv)
    and compare with our readers; raises on any disagreement."""
    import numpy as np

    from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl

    out = subprocess.run([str(py), "-c", _CHECK_LOADERS, str(data), str(n), str(box)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cryoDRGN loaders failed on {data}:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    imgs = read_mrc(data / "particles.mrcs")[0][:8]
    ctf = read_ctf_pkl(data / "ctf.pkl")
    rot, tf = read_pose_pkl(data / "poses.pkl")
    res = {
        "n_images": got["n_images"], "D": got["D"],
        "image_max_abs_diff": float(np.abs(np.asarray(got["first8"]) - imgs).max()),
        "ctf_shape": got["ctf_shape"],
        # cryoDRGN drops column 0 (D) and keeps apix, dfU, dfV, dfang, kV, Cs, w, phase
        "ctf_max_abs_diff": float(np.abs(np.asarray(got["ctf_first"]) - ctf[0, 1:]).max()),
        "rot_max_abs_diff": float(np.abs(np.asarray(got["rot_first8"]) - rot[:8]).max()),
        # PoseTracker multiplies the stored box fraction by the D it is given; cryoDRGN's train_vae passes its
        # lattice size box + 1 (as here), so its pixel shifts are frac * (box + 1)
        "trans_px_max_abs_diff": float(np.abs(np.asarray(got["trans_first8"]) - tf[:8] * (box + 1)).max()),
    }
    ok = (res["n_images"] == n and res["D"] == box and res["image_max_abs_diff"] < 1e-6
          and res["ctf_shape"] == [n, 8] and res["ctf_max_abs_diff"] < 1e-3 and res["rot_max_abs_diff"] < 1e-6
          and res["trans_px_max_abs_diff"] < 1e-4)
    res["agree"] = bool(ok)
    if not ok:
        raise RuntimeError(f"cryoDRGN reads the simulated files differently from cryofire: {res}")
    return res


def write_ind(path: Path, k: int) -> None:
    import numpy as np

    from cryofire_app.io import write_ind_pkl

    write_ind_pkl(path, np.arange(k, dtype=np.int64))


def sgd_record(m: dict, k: int) -> dict:
    """Per-image costs of the pretraining (epoch 0) and SGD (epoch 1) epochs of run (b) from its stdout log m["log"]
    (the run's own run.log has no timestamps): steady s/image from the progress lines, the rest of each epoch as
    its fixed start-up o_*; falls back to epoch time / images when an epoch has fewer than two progress lines."""
    text = Path(m["log"]).read_text(errors="replace")
    ep, st = parse_epoch_times(text), steady_rates(text)
    if 0 not in ep or 1 not in ep:
        raise RuntimeError(f"no pretrain/SGD epoch times in {m['log']}")
    rec = {**m, "images": k, "epoch_s": ep, "steady": st}
    for key, e in (("pretrain", 0), ("sgd", 1)):
        t_epoch = ep[e] / k
        t = st[e]["s_per_image"] if e in st else t_epoch
        rec[f"t_{key}_epoch_s_per_image"] = t_epoch
        rec[f"t_{key}_s_per_image"] = t
        rec[f"o_{key}_s"] = max(0.0, ep[e] - k * t)  # per-epoch start-up + first-batch excess
    return rec


def abinit_projection(n: int, hps: dict, sgd: dict) -> dict:
    d = AbinitDefaults()
    return {**project_abinit(n, sgd["t_pretrain_s_per_image"], hps["t_hps_s_per_image"], sgd["t_sgd_s_per_image"], d,
                             o_pretrain=sgd["o_pretrain_s"], o_sgd=sgd["o_sgd_s"]),
            "defaults": asdict(d),
            "formula": "o_pretrain + min(N, n_imgs_pretrain) * t_pretrain + epochs_pose_search * N * t_hps"
                       " + (num_epochs - epochs_pose_search) * (o_sgd + N * t_sgd)"}


def cryodrgn_runs(a: argparse.Namespace, py: Path, data: Path, work: Path, env: dict[str, str]) -> dict:
    exe = py.parent / "cryodrgn"
    common = [data / "particles.mrcs", "--ctf", data / "ctf.pkl", "--seed", "0", "--no-analysis",
              "--max-threads", str(a.threads)]
    out: dict = {}

    # (a) default hierarchical pose search, one HPS epoch on hps_images images (no pretraining: the search costs
    # the same whatever the volume looks like)
    k = a.hps_images
    write_ind(work / f"ind{k}.pkl", k)
    run = work / "cdrgn_abinit_hps"
    m = run_measured([exe, "abinit", *common, "--zdim", "8", "-o", run, "--ind", work / f"ind{k}.pkl",
                      "--n-imgs-pretrain", "0", "--epochs-pose-search", "1", "--epochs-sgd", "0"],
                     work / "cdrgn_abinit_hps.out", env)
    ep = parse_epoch_times((run / "run.log").read_text())
    if 1 not in ep:
        raise RuntimeError(f"no pose-search epoch time in {run / 'run.log'}")
    out["abinit_hps"] = {**asdict(m), "images": k, "epoch_s": ep, "t_hps_s_per_image": ep[1] / k}

    # (b) pretraining and one SGD (pose-table) epoch at their defaults; --epochs-pose-search 0 goes from the
    # pretraining straight to SGD (pose table initialised to identity: the cost per image does not depend on it)
    k = a.sgd_images
    write_ind(work / f"ind{k}.pkl", k)
    run = work / "cdrgn_abinit_sgd"
    m = run_measured([exe, "abinit", *common, "--zdim", "8", "-o", run, "--ind", work / f"ind{k}.pkl",
                      "--n-imgs-pretrain", str(k), "--epochs-pose-search", "0", "--epochs-sgd", "1",
                      "--log-interval", "64"],
                     work / "cdrgn_abinit_sgd.out", env)
    out["abinit_sgd"] = sgd_record(asdict(m), k)
    out["abinit_projection"] = abinit_projection(a.n, out["abinit_hps"], out["abinit_sgd"])

    # (c) train_vae with the true poses, one epoch, default 1024-wide and 256-wide networks
    k = a.vae_images
    write_ind(work / f"ind{k}.pkl", k)
    for name, width in (("train_vae_1024", []), ("train_vae_256", ["--enc-dim", "256", "--dec-dim", "256"])):
        run = work / f"cdrgn_{name}"
        m = run_measured([exe, "train_vae", *common, "--zdim", "8", "--poses", data / "poses.pkl", "-n", "1",
                          "-o", run, "--ind", work / f"ind{k}.pkl", *width],
                         work / f"cdrgn_{name}.out", env)
        log = (run / "run.log") if (run / "run.log").exists() else Path(m.log)
        ep = parse_epoch_times(log.read_text())
        if not ep:
            ep = parse_epoch_times(Path(m.log).read_text())
        if not ep:
            raise RuntimeError(f"no epoch time in {log}")
        t = ep[max(ep)] / k
        out[name] = {**asdict(m), "images": k, "epoch_s": ep, "t_s_per_image": t,
                     "projection_total_s": VAE_DEFAULT_EPOCHS * a.n * t,
                     "formula": f"{VAE_DEFAULT_EPOCHS} epochs * N * t"}
    return out


def _steps(run: Path) -> tuple[list[dict], list[dict]]:
    ev = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [e for e in ev if e.get("event") == "Step"], ev


def ours_runs(a: argparse.Namespace, data: Path, work: Path, env: dict[str, str]) -> dict:
    bindir = Path(sys.executable).parent
    cry = bindir / "cryofire"
    out: dict = {"mode": a.ours}
    run = work / "ours_train"
    if a.ours in ("short", "full"):
        if run.exists():
            import shutil
            shutil.rmtree(run)
        cmd = [cry, "train", data / "particles.mrcs", "--ctf", data / "ctf.pkl", "-o", run, "--device", a.device,
               "--threads", str(a.threads), "--quiet", "--seed", "0"]
        if a.ours == "short":
            cmd += ["--num-images", str(a.ours_images)]
        m = run_measured(cmd, work / "ours_train.out", env)
        steps, events = _steps(run)
        rates = phase_rates(steps)
        last_step = steps[-1]["elapsed_s"]
        final_pass = m.wall_s - last_step  # final eval pass + start-up, from the process wall time
        out["train"] = {**asdict(m), "phases": rates, "final_pass_and_startup_s": final_pass,
                        "images_seen": steps[-1]["images_seen"]}
        seed_s = rates["seed"]["seconds"]
        t_d = rates.get("distill", {}).get("s_per_image", math.nan)
        t_j = rates.get("joint", {}).get("s_per_image", math.nan)
        out["projection"] = {**project_seeded(a.n, seed_s, t_d, t_j, final_pass),
                             "formula": "T_seed + 0.6 * 20 * n_train * t_distill + 0.4 * 20 * n_train * t_joint"
                                        " + T_final_pass"}
        if a.ours == "full":
            out["projection"]["measured_total_s"] = m.wall_s
        ev = work / "ours_eval.json"
        me = run_measured([cry, "eval", run, "--gt-poses", data / "poses.pkl", "--gt-labels", data / "labels.npy",
                           "--gt-maps", data / "gt_state_0.mrc", data / "gt_state_1.mrc", "-o", ev],
                          work / "ours_eval.out", env)
        out["eval"] = json.loads(ev.read_text())
        out["eval_wall_s"] = me.wall_s
        seed_npz = run / "checkpoints" / "seed.npz"
        if seed_npz.exists():
            out["seed_eval"] = seed_accuracy(seed_npz, data)
        model_run = run
    else:
        seed = json.loads((RESULTS / "abinit_seed.json").read_text())
        out["seed_from"] = "benchmarks/results/abinit_seed.json"
        out["seed_eval"] = {"rot_view_median_deg": seed["rotation"]["rot_view_median_deg"],
                            "confusion": seed.get("confusion"), "wall_s": seed["wall_s"]}
        m = run_measured([sys.executable, HERE / "throughput.py", "--boxes", str(a.box), "--radii", "12",
                          "--threads", str(a.threads), "--device", a.device, "--steps", "8", "--seconds", "20"],
                         work / "throughput.out", env)
        js = sorted(RESULTS.glob("throughput-*.json"), key=lambda p: p.stat().st_mtime)[-1]
        out["throughput"] = {**asdict(m), "json": js.name, "result": json.loads(js.read_text())}
        out["note"] = ("reuse mode: no cryofire train here; run `--ours short` for the per-phase costs of the seeded "
                       "schedule")
        return out

    # encoder-only inference over all N images
    pred = work / "ours_infer"
    mi = run_measured([cry, "infer", model_run, data / "particles.mrcs", "--ctf", data / "ctf.pkl", "-o", pred,
                       "--select", "encoder", "--device", a.device, "--threads", str(a.threads)],
                      work / "ours_infer.out", env)
    out["infer"] = {**asdict(mi), "images": a.n, "s_per_image_incl_startup": mi.wall_s / a.n}
    return out


def seed_accuracy(seed_npz: Path, data: Path) -> dict:
    """Median view error of the seed's poses (training split rows) against the simulation's ground truth."""
    import numpy as np

    from cryofire_app.analysis import metrics
    from cryofire_app.io import read_pose_pkl

    z = np.load(seed_npz)
    gt_rot, _ = read_pose_pkl(data / "poses.pkl")
    idx = z["pos"] if "pos" in z.files else np.arange(len(z["rot"]))
    er = metrics.rotation_errors(z["rot"], gt_rot[idx])
    return {"rot_view_median_deg": er["rot_view_median_deg"], "n": int(len(idx)),
            "wall_s": float(z["wall_s"]) if "wall_s" in z.files else None}


# ------------------------------------------------------------------------------------------------------ reporting
def summary_rows(res: dict) -> list[tuple[str, float | None, float | None, str]]:
    """(what, cryoDRGN, cryofire, unit) rows of the comparison table."""
    c = res.get("cryodrgn") or {}
    o = res.get("ours") or {}
    rows: list[tuple[str, float | None, float | None, str]] = []
    op = o.get("projection") or {}
    ph = (o.get("train") or {}).get("phases") or {}
    n_tr = n_train_split(res["args"]["n"])
    seed_per_img = (ph.get("seed", {}).get("seconds") / n_tr) if "seed" in ph else None
    t_hps = c.get("abinit_hps", {}).get("t_hps_s_per_image")
    d = AbinitDefaults()
    rows.append(("pose search, s per image: cryoDRGN one HPS epoch vs cryofire whole seed / n_train",
                 t_hps, seed_per_img, "s"))
    rows.append((f"pose search of the default schedule, s per image: cryoDRGN {d.epochs_pose_search} HPS epochs vs "
                 "cryofire whole seed / n_train",
                 d.epochs_pose_search * t_hps if t_hps is not None else None, seed_per_img, "s"))
    rows.append(("cryoDRGN pretrain vs our distill step, s per image",
                 c.get("abinit_sgd", {}).get("t_pretrain_s_per_image"), ph.get("distill", {}).get("s_per_image"), "s"))
    rows.append(("cryoDRGN SGD epoch vs our joint step, s per image",
                 c.get("abinit_sgd", {}).get("t_sgd_s_per_image"), ph.get("joint", {}).get("s_per_image"), "s"))
    rows.append(("cryoDRGN train_vae (known poses, 1024) vs our joint step, s per image",
                 c.get("train_vae_1024", {}).get("t_s_per_image"), ph.get("joint", {}).get("s_per_image"), "s"))
    rows.append(("cryoDRGN train_vae (known poses, 256) vs our joint step, s per image",
                 c.get("train_vae_256", {}).get("t_s_per_image"), ph.get("joint", {}).get("s_per_image"), "s"))
    rows.append(("inference, s per image (ours: encoder-only `cryofire infer`, incl. start-up)", None,
                 (o.get("infer") or {}).get("s_per_image_incl_startup"), "s"))
    rows.append(("projected default schedule on N images, hours (cryoDRGN abinit vs cryofire seeded)",
                 (c.get("abinit_projection") or {}).get("total_s", math.nan) / 3600 if c else None,
                 op.get("total_s", math.nan) / 3600 if op else None, "h"))
    peak_c = max([c[k]["tree_peak_rss_mb"] for k in ("abinit_hps", "abinit_sgd", "train_vae_1024", "train_vae_256")
                  if k in c] or [math.nan]) if c else None
    peak_o = (o.get("train") or {}).get("tree_peak_rss_mb")
    rows.append(("peak RSS of training, process tree, MB", peak_c, peak_o, "MB"))
    if c:
        rows.append(("peak RSS, largest single process, MB",
                     max(c[k]["ru_maxrss_mb"] for k in ("abinit_hps", "abinit_sgd", "train_vae_1024",
                                                         "train_vae_256") if k in c),
                     (o.get("train") or {}).get("ru_maxrss_mb"), "MB"))
    rows.append(("median view error vs ground truth, deg (cryofire: the seed's poses of the training split)", None,
                 (o.get("seed_eval") or {}).get("rot_view_median_deg"), "deg"))
    return rows


def _processes(res: dict) -> list[tuple[str, dict]]:
    """(name, Measured dict) of every measured cryoDRGN / cryofire process in res."""
    out = []
    for side, label in (("cryodrgn", "cryodrgn"), ("ours", "cryofire")):
        for k, v in (res.get(side) or {}).items():
            if isinstance(v, dict) and "wall_s" in v and "ru_maxrss_mb" in v:
                out.append((f"{label} {k}", v))
    return out


def _epoch(rec: dict, e: int) -> float:
    """Epoch seconds from a record (int keys live, str keys after a JSON round trip)."""
    ep = rec.get("epoch_s") or {}
    return float(ep.get(e, ep.get(str(e), math.nan)))


def unloaded_estimates(res: dict) -> list[str]:
    """s/image x the cores the process actually got / threads: what the same work would take on otherwise idle
    cores (assumes the work scales with the cores; an estimate, printed beside the issue's unloaded numbers)."""
    thr = res["machine"]["threads"]
    c, o = res.get("cryodrgn") or {}, res.get("ours") or {}
    out = []

    def est(rec: dict, t: float | None) -> float | None:
        cores = (rec.get("extra") or {}).get("cores_used")
        return None if t is None or cores is None else t * cores / thr

    items = []
    if c:
        items += [("cryoDRGN pose search", est(c["abinit_hps"], c["abinit_hps"]["t_hps_s_per_image"]), "7.7"),
                  ("cryoDRGN pretrain", est(c["abinit_sgd"], c["abinit_sgd"]["t_pretrain_s_per_image"]), "0.07-0.1"),
                  ("cryoDRGN SGD", est(c["abinit_sgd"], c["abinit_sgd"]["t_sgd_s_per_image"]), "0.07-0.1"),
                  ("cryoDRGN train_vae 1024", est(c["train_vae_1024"], c["train_vae_1024"]["t_s_per_image"]), "0.24"),
                  ("cryoDRGN train_vae 256", est(c["train_vae_256"], c["train_vae_256"]["t_s_per_image"]), "0.026")]
    tr = o.get("train") or {}
    ph = tr.get("phases") or {}
    if "seed" in ph:
        items.append(("cryofire seed (whole, per training image)",
                      est(tr, ph["seed"]["seconds"] / n_train_split(res["args"]["n"])), None))
    for k in ("distill", "joint"):
        if k in ph:
            items.append((f"cryofire {k}", est(tr, ph[k]["s_per_image"]), None))
    for name, v, quoted in items:
        if v is not None:
            out.append(f"{name}: {_fmt(v)} s/image" + (f" (issue: {quoted})" if quoted else ""))
    return out


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def table_markdown(rows) -> list[str]:
    lines = ["| measure | cryoDRGN 4.3.1 | cryofire | cryoDRGN / cryofire |", "|---|---:|---:|---:|"]
    for what, c, o, _unit in rows:
        r = ratio(c, o)
        lines.append(f"| {what} | {_fmt(c)} | {_fmt(o)} | {('%.1fx' % r) if r is not None else '-'} |")
    return lines


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _header_lines(res: dict) -> list[str]:
    """Title, data and machine lines, the comparison table and the issue's unloaded reference numbers."""
    a, m = res["args"], res["machine"]
    return [f"# cryoDRGN 4.3.1 vs cryofire, side by side ({res['date']}, {res['host']})", "",
            f"Data: `cryofire simulate` ({a['n']} images, box {a['box']}, SNR 0.1, two hinge states 90/10, CTF, "
            "shifts <= 4 px, seed 0), the same files for both. Produced by `benchmarks/cryodrgn_compare.py`.", "",
            f"Machine: {m['cpu_count']} CPU cores, {m['threads']} threads per process, "
            f"**shared with other developers' jobs** (load average {m['load_before']} before, "
            f"{m.get('load_after', '-')} after): absolute times are inflated, the ratios come from one "
            "run under the same load.", "", *table_markdown(summary_rows(res)), "",
            "For reference, issue 6 quotes for cryoDRGN 4.3.1 on an (unloaded) machine of this kind: pose search "
            "~7.7 s/image, ~0.07-0.1 s/image in its other phases, 8.9 GB peak, ~36 h for the default `abinit` "
            "schedule; `train_vae` 0.24 s/image (0.026 s 256-wide).", ""]


def _code_and_estimate_lines(res: dict) -> list[str]:
    """The cryofire commit measured and the load-corrected s/image estimates (each paragraph only if known)."""
    lines = []
    code = res.get("code") or {}
    if code:
        lines += [f"cryofire code measured: commit {code.get('commit', '?')[:12]} (exported, "
                  f"{len(code.get('uncommitted_in_work_tree_left_out', []))} uncommitted work-tree edits left out).",
                  ""]
    est = unloaded_estimates(res)
    if est:
        lines += ["Load-corrected estimates (s/image x cores the process got / threads; idle 2 cores): "
                  + "; ".join(est) + ".", ""]
    return lines


def _cryodrgn_lines(res: dict) -> list[str]:
    """What cryoDRGN's bounded runs were and its projected full schedules (hours); empty without cryoDRGN runs."""
    c = res.get("cryodrgn") or {}
    if not c:
        return []
    n, pr = res["args"]["n"], c["abinit_projection"]
    return ["cryoDRGN runs (bounded): "
            f"`abinit` default pose search on {c['abinit_hps']['images']} images (one HPS epoch, "
            f"{_epoch(c['abinit_hps'], 1):.0f} s, no pretraining); `abinit` pretraining and "
            f"one SGD epoch on {c['abinit_sgd']['images']} images (`--epochs-pose-search 0`: straight to SGD; "
            f"steady s/image from its progress lines, per-epoch start-up o_pretrain "
            f"{c['abinit_sgd']['o_pretrain_s']:.0f} s, o_sgd {c['abinit_sgd']['o_sgd_s']:.0f} s); "
            f"`train_vae` one epoch on "
            f"{c['train_vae_1024']['images']} images with the true poses.", "",
            f"Projected cryoDRGN `abinit` default schedule on {n} images: "
            f"{pr['total_s'] / 3600:.1f} h = {pr['formula']} "
            f"(pretrain {pr['pretrain_s'] / 3600:.2f} h, pose search {pr['pose_search_s'] / 3600:.1f} h, "
            f"SGD {pr['sgd_s'] / 3600:.1f} h). `train_vae` (poses known, not ab initio) 20 epochs: "
            f"{c['train_vae_1024']['projection_total_s'] / 3600:.1f} h (1024-wide), "
            f"{c['train_vae_256']['projection_total_s'] / 3600:.2f} h (256-wide).", ""]


def _ours_lines(res: dict) -> list[str]:
    """cryofire's measured phase costs (s/image), projected schedule (min) and accuracy (deg, px); empty without
    a projection."""
    o = res.get("ours") or {}
    if not o.get("projection"):
        return []
    p, ph = o["projection"], o["train"]["phases"]
    ev, se = o.get("eval") or {}, o.get("seed_eval") or {}
    return [f"cryofire `train` (default seeded schedule, mode `{o['mode']}`): seed {p['seed_s']:.0f} s, "
            f"distill {_fmt(ph.get('distill', {}).get('s_per_image'))} s/image, joint "
            f"{_fmt(ph.get('joint', {}).get('s_per_image'))} s/image, final pass + start-up "
            f"{p['final_pass_s']:.0f} s; projected default schedule ({p['images_total']:.0f} training images):"
            f" {p['total_s'] / 60:.1f} min = {p['formula']}."
            + (f" Measured to completion: {p['measured_total_s'] / 60:.1f} min." if "measured_total_s" in p
               else ""), "",
            f"Accuracy (cryofire, `cryofire eval`, all {res['args']['n']} images, mode `{o['mode']}`): final encoder "
            f"poses {_fmt(ev.get('rot_view_median_deg'))} deg median view error, translation median "
            f"{_fmt(ev.get('trans_median_px'))} px, confusion {_fmt(ev.get('confusion'))}, FSC 0.143 "
            f"major/minor {_fmt(ev.get('res_major_0.143_px'))} / {_fmt(ev.get('res_minor_0.143_px'))} px; "
            f"the seed's own poses "
            f"{_fmt(se.get('rot_view_median_deg'))} deg"
            + (" (after the short run's 3,000 training images the encoder has not learned the seed's poses "
               "yet: the encoder's numbers need `--ours full`)" if o["mode"] == "short" else "")
            + ". cryoDRGN's accuracy is not measured: its bounded runs stop after one pose-search epoch on "
            "16 images, far from an answer.", ""]


def _process_lines(res: dict) -> list[str]:
    """Table of every measured process (wall and CPU s, cores used, load, peak RSS in MB), then the notes."""
    lines = ["Processes (wall time, CPU time of the process tree, average cores it got, peak memory):", "",
             "| process | wall (s) | CPU (s) | cores used | 5-min load at its end |"
             " peak RSS tree / largest process (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in _processes(res):
        lines.append(f"| {name} | {m['wall_s']:.0f} | {m.get('cpu_s', math.nan):.0f} | "
                     f"{m.get('extra', {}).get('cores_used', math.nan):.2f} | "
                     f"{m.get('extra', {}).get('load_at_end', '-')} | "
                     f"{m['tree_peak_rss_mb']:.0f} / {m['ru_maxrss_mb']:.0f} |")
    return lines + ["", "Notes:", *[f"- {n}" for n in res.get("notes", []) if n], ""]


def results_markdown(res: dict) -> str:
    """The .md report of a results dict (as written to / read back from the JSON)."""
    return "\n".join(_header_lines(res) + _code_and_estimate_lines(res) + _cryodrgn_lines(res) + _ours_lines(res)
                     + _process_lines(res))


def write_results(res: dict, stem: str) -> tuple[Path, Path]:
    """Write results/<stem>.json (res as is) and results/<stem>.md (its report); returns both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    jp, mp = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    atomic_write(jp, json.dumps(res, indent=1, default=float) + "\n")
    atomic_write(mp, results_markdown(res))
    return jp, mp


def standard_notes(threads: int, cpu_count: int | None, total_wall_s: float | None) -> list[str]:
    """Caveats written under every results table."""
    return [
        f"Every process ran with OMP_NUM_THREADS={threads} on a machine whose {cpu_count} cores were shared "
        "with other developers' jobs; the load average is recorded above.",
        "Per-image costs: cryoDRGN pretrain/SGD = steady rate between in-epoch progress lines (start-up counted "
        "once per epoch in the projection); cryoDRGN pose search and train_vae = epoch time / images (one batch of "
        "16, resp. 128 images, start-up included); cryofire distill/joint = between the first and last Step of the "
        "phase in log.jsonl; cryofire seed = its whole wall time.",
        "cryoDRGN `abinit` SGD epoch was reached with --epochs-pose-search 0 (pose table from identity); its cost "
        "per image does not depend on how the poses were found. The pose-search cost is one epoch of one batch (16)"
        " and includes that epoch's start-up.",
        "Peak RSS of cryoDRGN's bounded runs holds only the subset's images (it loads the stack eagerly: +16 KB "
        "per image at box 64, ~85 MB for 5000); its pose-search memory depends on the batch (16), not on N.",
        f"Whole script: {total_wall_s / 60:.1f} min (target < 30 min on an idle machine)." if total_wall_s else "",
    ]


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
