"""The processes of cryodrgn_compare.py, each timed with its peak memory: the cryoDRGN venv, the simulation,
cryoDRGN's bounded jobs, and cryofire's train / eval / infer."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryodrgn_costs import (
    VAE_DEFAULT_EPOCHS,
    AbinitDefaults,
    parse_epoch_times,
    phase_rates,
    project_abinit,
    project_seeded,
    steady_rates,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CRYODRGN = "cryodrgn==4.3.1"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk; cryodrgn 4.3.1 requires torch>=2


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
