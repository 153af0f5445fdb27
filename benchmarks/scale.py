"""Scale benchmark: wall time and memory of `cryofire train` per phase against the number of particles N and the box D.

For each box a base stack is simulated once from the bundled 70S map (SNR 0.1, shifts <= 2 px); a stack of N
particles lists that stack's file N / n_base times in a .txt with the CTF rows tiled, so N grows without new image
data on disk (the pixels repeat; the cost of reading, searching and training does not depend on their content). Each
(D, N) case runs `cryofire train` in its own worker process with the CLI's defaults plus a fixed image budget
(--num-images) and the suite's seed subset (--seed-particles; the quick suites also open the joint phase on
schedule, see `worker`), and records per phase (setup, seed, distill, joint,
outputs: the final pass over every particle and the self-diagnosis) the wall time and the largest anonymous memory
(RssAnon: the process's own arrays), and the peak resident set (VmHWM).

The fit over N: for each phase, the exponent b of time ~ N^b over the cases whose N exceeds the seed subset (flat:
b ~ 0; linear: b ~ 1). The seed must be flat; the outputs pass (one encoder call per particle) is linear by design;
distill and joint train a fixed number of images, so they must be flat as well.

    nice -n 10 python benchmarks/scale.py --suite quick      # box 64 N 4k-100k, box 128 N 8k, seed subset 4k; ~40 min
    nice -n 10 python benchmarks/scale.py --suite full       # box 64 N 5k-100k and box 128 N 20k at the defaults
    nice -n 10 python benchmarks/scale.py --suite quick --cases 128:8000   # one case again, the others' rows kept
    python benchmarks/scale.py --suite full --device cuda    # the same on a GPU
    torchrun --nproc_per_node G benchmarks/scale.py --worker OUT.json -- PARTICLES -o RUN ...   # one case, G GPUs

Writes benchmarks/results/scale-<suite>.json and .md (atomically). The work folder (default benchmarks/work/scale,
gitignored) holds the simulations (reused when present) and one run folder per case (always trained afresh).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402  (puts the project root on sys.path)

WORKDIR = HERE / "work" / "scale"
PHASES = ("setup", "seed", "distill", "joint", "outputs")
# suite: boxes with their N values, the seed subset (--seed-particles; None: the default) and the image budget
SUITES = {
    "quick": dict(cases=[(64, 4000), (64, 8000), (64, 16000), (64, 32000), (64, 100000), (128, 8000)], n_base=4000,
                  seed_particles=4000, num_images=16000, open_joint=True),
    # the harness itself, in a minute
    "check": dict(cases=[(32, 400), (32, 800)], n_base=400, seed_particles=400, num_images=640, open_joint=True),
    "full": dict(cases=[(64, 5000), (64, 20000), (64, 50000), (64, 100000), (128, 20000)], n_base=5000,
                 seed_particles=None, num_images=200000, open_joint=False),
}


def memory() -> dict[str, float]:
    """This process's RssAnon, VmRSS and VmHWM in MB (Linux /proc; empty elsewhere)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("RssAnon", "VmRSS", "VmHWM"):
                out[key] = float(val.split()[0]) / 1024.0
    except OSError:
        pass
    return out


class AnonPeak:
    """The largest RssAnon (MB) since the last ``take()``, sampled every ``every`` s by a daemon thread, so a peak
    inside a long phase is not missed between two events; also the mean 1-minute load average over the run
    (``load``: about the thread count when the case ran alone, more when other jobs shared the cores)."""

    def __init__(self, every: float = 0.2):
        import threading

        self.peak, self._lock, self._load_sum, self._n = 0.0, threading.Lock(), 0.0, 0
        threading.Thread(target=self._run, args=(every,), daemon=True).start()

    def _run(self, every: float) -> None:
        while True:
            v = memory().get("RssAnon", 0.0)
            with self._lock:
                self.peak = max(self.peak, v)
                self._load_sum, self._n = self._load_sum + os.getloadavg()[0], self._n + 1
            time.sleep(every)

    @property
    def load(self) -> float:
        with self._lock:
            return self._load_sum / max(1, self._n)

    def take(self) -> float:
        with self._lock:
            v, self.peak = max(self.peak, memory().get("RssAnon", 0.0)), 0.0
        return v


def worker(out_json: Path, train_argv: list[str], open_joint: bool = False) -> int:
    """Run one `cryofire train` (its parser and config, so the CLI's defaults hold) and time it per phase. Under
    torchrun only rank 0 writes ``out_json``. ``open_joint``: the joint phase starts at the distill fraction whether
    or not the encoder has reached the seed's poses (a short budget seldom gets there; the cost is what is measured)."""
    from cryofire_app.commands.train import add_args, config_from_args
    from cryofire_app.training import Failed, Finished, Step, Trainer

    p = argparse.ArgumentParser()
    add_args(p)
    cfg = config_from_args(p.parse_args(train_argv))
    if open_joint:
        cfg.seeded.seed_agreement_deg = 180.0
    t0 = time.time()
    phase, last_t = "setup", t0
    per: dict[str, dict] = {}
    failed = None
    tr = Trainer(cfg)
    anon = AnonPeak()
    for ev in tr.run():   # the time since the previous event is charged to this event's phase
        now = time.time()
        if isinstance(ev, Step) and phase != "outputs":
            phase = {"seed": "seed", "distill": "distill"}.get(ev.phase, "joint")
        elif isinstance(ev, Finished):
            phase = "outputs"
        rec = per.setdefault(phase, {"s": 0.0, "rss_anon_mb": 0.0})
        rec["s"] += now - last_t
        rec["rss_anon_mb"] = max(rec["rss_anon_mb"], anon.take())
        last_t = now
        if isinstance(ev, Step) and ev.images_seen >= ev.images_total:
            phase = "outputs"   # what follows the last step: final pass over every particle, diagnosis
        if isinstance(ev, Failed):
            failed = ev.text
    mem = memory()
    res = dict(N=int(tr.data.N), D=int(tr.D), seed_particles=int(len(tr.seed_pos)), images=int(tr.images_seen),
               world=int(tr.world), device=str(tr.device), wall_s=time.time() - t0, phases=per,
               peak_rss_mb=mem.get("VmHWM"), load=anon.load, failed=failed)
    if tr.rank == 0:
        from cryofire_app.training.checkpoint import atomic_write_text

        atomic_write_text(out_json, json.dumps(res, indent=1) + "\n")
    return 0 if failed is None else 1


def base_stack(box: int, n: int, workdir: Path) -> Path:
    """The simulated base stack for ``box`` (reused when present): its particles.star."""
    from cryofire_app.simulate import DEMO_MAP, DEMO_MAP_APIX, SimulationConfig, simulate

    out = workdir / f"data-b{box}-n{n}"
    if not (out / "particles.star").is_file():
        simulate(SimulationConfig(outdir=str(out), n=n, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=box, snr=0.1,
                                  max_shift_px=2.0, seed=0, progress=False, overwrite=True))
    return out / "particles.star"


def long_stack(star: Path, k: int) -> tuple[Path, Path]:
    """A .txt listing ``star``'s stack k times and a k-times tiled ctf.pkl: k times the particles, no new pixels."""
    import numpy as np

    from cryofire_app.io import read_ctf_pkl, write_ctf_pkl

    txt = star.parent / f"x{k}.txt"
    txt.write_text("".join(f"{star.parent / 'particles.mrcs'}\n" for _ in range(k)))
    ctf = star.parent / f"x{k}_ctf.pkl"
    write_ctf_pkl(ctf, np.tile(read_ctf_pkl(star.parent / "ctf.pkl"), (k, 1)))
    return txt, ctf


def run_case(box: int, n: int, suite: dict, args) -> dict:
    """Simulate (or reuse) and train one case in a worker process; its timing record (or the failure)."""
    star = base_stack(box, suite["n_base"], args.workdir)
    k = max(1, round(n / suite["n_base"]))
    txt, ctf = long_stack(star, k)
    run = args.workdir / f"run-b{box}-n{n}"
    out = args.workdir / f"case-b{box}-n{n}.json"
    out.unlink(missing_ok=True)
    train = [str(txt), "--ctf", str(ctf), "-o", str(run), "--num-images", str(suite["num_images"]),
             "--threads", str(args.threads), "--device", args.device, "--quiet"]
    if suite["seed_particles"] is not None:
        train += ["--seed-particles", str(suite["seed_particles"])]
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [sys.executable, __file__, "--worker", str(out)] + (["--open-joint"] if suite["open_joint"] else []) + ["--"]
    cmd += train
    print(f"[scale] box {box}, N {n}: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not out.is_file():
        return dict(N=n, D=box, failed=f"worker exit {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(out.read_text())


def growth(rows: list[dict], cap: int | None) -> dict[str, float | None]:
    """Per phase, the least-squares exponent b of time ~ N^b over the box's cases with N above the seed subset."""
    import numpy as np

    out: dict[str, float | None] = {}
    use = [r for r in rows if not r.get("failed") and (cap is None or r["N"] >= cap)]
    for ph in PHASES:
        pts = [(r["N"], r["phases"].get(ph, {}).get("s", 0.0)) for r in use]
        pts = [(n, s) for n, s in pts if s > 0]
        out[ph] = (float(np.polyfit(np.log([n for n, _ in pts]), np.log([s for _, s in pts]), 1)[0])
                   if len({n for n, _ in pts}) >= 2 else None)
    return out


def _num(x, d: int = 0) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def markdown(res: dict) -> list[str]:
    """The results as markdown: one row per case, then the growth exponents per box."""
    rows = []
    for r in res["cases"]:
        ph = r.get("phases", {})
        rows.append([r["D"], r["N"], r.get("seed_particles", "-"), r.get("images", "-")]
                    + [_num(ph.get(p, {}).get("s")) for p in PHASES] + [_num(r.get("wall_s")),
                    _num(max((ph.get(p, {}).get("rss_anon_mb", 0.0) for p in PHASES), default=None)),
                    _num(r.get("peak_rss_mb")), _num(r.get("load"), 1), "failed" if r.get("failed") else "ok"])
    lines = [f"# Scale benchmark ({res['suite']}), {res['date']}, {res['host']}", "",
             f"device {res['device']}, {res['threads']} threads, seed subset "
             f"{res['seed_particles'] or 'default'}, {res['num_images']} images trained per case; times in s, "
             "memory in MB (anon: the process's own arrays, sampled every 0.2 s; peak: the resident high-water "
             "mark VmHWM; load: the mean 1-minute load average during the case, about the thread count when it ran "
             "alone: times measured at a higher load are inflated, memory is not)", ""]
    lines += report.md_table(["D", "N", "seeded", "images"] + [f"{p} s" for p in PHASES]
                             + ["total s", "anon MB", "peak MB", "load", "run"], rows)
    dates = sorted({r["date"] for r in res["cases"] if r.get("date")})
    if len(dates) > 1:
        lines += ["", "Rows measured on different days (`--cases`): " + "; ".join(
            f"{d}: " + ", ".join(f"D {r['D']} N {r['N']}" for r in res["cases"] if r.get("date") == d) for d in dates)]
    lines += ["", "Growth exponent b of time ~ N^b over the cases with N >= the seed subset (0: flat, 1: linear):", ""]
    grow = [[D] + [_num(b, 2) for b in g.values()] for D, g in res["growth"].items()]
    lines += report.md_table(["D"] + list(PHASES), grow)
    return lines


def _selected(suite: dict, spec: str | None) -> list[tuple[int, int]]:
    """The suite's (D, N) cases, or those named in ``spec`` ("D:N,D:N"; each must be one of the suite's)."""
    if not spec:
        return list(suite["cases"])
    want = [tuple(int(x) for x in c.split(":")) for c in spec.split(",")]
    unknown = [c for c in want if c not in suite["cases"]]
    if unknown:
        raise SystemExit(f"not cases of this suite: {unknown}; it has {suite['cases']}")
    return want


def _merged(path: Path, new: list[dict], suite: dict) -> list[dict]:
    """``new`` rows in place of the same (D, N) rows of an earlier result file, in the suite's case order."""
    prev = json.loads(path.read_text()) if path.is_file() else {"cases": []}
    old = [dict(r, date=r.get("date", prev.get("date"))) for r in prev["cases"]]
    rows = {(r["D"], r["N"]): r for r in old} | {(r["D"], r["N"]): r for r in new}
    return [rows[c] for c in suite["cases"] if c in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="quick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", type=Path, default=WORKDIR)
    p.add_argument("--cases", default=None, help="only these cases of the suite, as D:N,D:N (the other cases' rows of "
                                                  "the suite's result file are kept)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--open-joint", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.worker is not None:
        return worker(args.worker, [a for a in rest if a != "--"], args.open_joint)
    suite = SUITES[args.suite]
    args.workdir.mkdir(parents=True, exist_ok=True)
    st = report.stamp()
    cases = [dict(run_case(box, n, suite, args), date=st["date"]) for box, n in _selected(suite, args.cases)]
    if args.cases:
        cases = _merged(report.RESULTS / f"scale-{args.suite}.json", cases, suite)
    cap = suite["seed_particles"] or 20000
    boxes = sorted({r["D"] for r in cases})
    res = dict(suite=args.suite, date=st["date"], host=st["host"], device=args.device, threads=args.threads,
               seed_particles=suite["seed_particles"], num_images=suite["num_images"], cases=cases,
               growth={D: growth([r for r in cases if r["D"] == D], cap) for D in boxes},
               load_average=list(os.getloadavg()))
    from cryofire_app.training.checkpoint import atomic_write_text

    report.RESULTS.mkdir(exist_ok=True)
    atomic_write_text(report.RESULTS / f"scale-{args.suite}.json", json.dumps(res, indent=1) + "\n")
    lines = markdown(res)
    atomic_write_text(report.RESULTS / f"scale-{args.suite}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(not r.get("failed") for r in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
