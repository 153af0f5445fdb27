"""Benchmark matrix (issue 19 part 1): simulate and solve, from scratch at the DEFAULTS, many molecules and conditions.

Every case is simulated with the project's simulator (cryofire_app.simulate) from a real map in ../shared/fixtures,
then solved with a plain ``cryofire train PARTICLES.star -o RUN --seed S`` (no per-case flags; ``--threads`` only
sets the CPU threads, ``--quiet`` only the progress bar) in a child process (wall time, peak RSS), scored with
``cryofire eval`` against the simulator's truth, and compared with the Bayes-oracle state ceiling (oracle.py: the true
poses, CTFs, shifts and maps). Per case: median/mean view error, in-plane error, translation error, state confusion
(PC1 thresholds of z, and the seed's own hard labels), FSC 0.5 of the major state against its truth (A and px), the
oracle's confusion, wall time, peak RSS, and the run's own verdict (RUN/report.json, "n/a" when absent). Over the
matrix: the confusion matrix of the verdict against the truth ("truly converged" = median view error <= 3 deg at
SNR >= 0.1, <= 5 deg at SNR 0.05).

    nice -n 10 python benchmarks/matrix.py --suite smoke                    # 3 cases, ~15-20 min on 2 cores
    nice -n 10 python benchmarks/matrix.py --suite full                     # all cases, hours (see --list)
    python benchmarks/matrix.py --suite full --cases 70s-b32-snr01-h9010,spike-b32-snr01-h5050
    python benchmarks/matrix.py --list                                      # cases and estimated times

Writes benchmarks/results/matrix-<suite>.json and .md (atomically, after every case; with --cases the rows of the
other cases already in that file are kept). The work folder (default benchmarks/work/matrix, gitignored) holds
CASE/data (the simulation, reused when its settings match) and CASE/run (always trained afresh).

Pixel sizes of maps whose header says 0 are assumptions (MapSpec.apix_note). Pixel size = apix * map box / box
(the simulator Fourier-crops or pads the map to the box: the field of view stays the map's).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402  (puts the project root on sys.path)
from matrix_cases import (  # noqa: E402,F401  (MAPS, SEED_S_PER_IMAGE re-exported: hetero.py, tests)
    CASES,
    FIXTURES,
    MAPS,
    SEED_S_PER_IMAGE,
    estimate_s,
    suite_cases,
)
from matrix_report import _dur, _f, markdown, verdict_confusion, write_results  # noqa: E402
from matrix_runs import (  # noqa: E402,F401  (re-exported: hetero.py, tests/test_bench_matrix.py)
    _git_commit,
    case_row,
    read_verdict,
    run_case,
    run_train,
    sim_config,
    truly_converged,
)

WORKDIR = HERE / "work" / "matrix"


def list_cases(suite: str | None, num_images: int | None) -> None:
    total: dict[str, float] = {}
    print(f"{'case':28s} {'suites':11s} {'map':9s} {'box':>4s} {'px A':>6s} {'SNR':>5s} {'N':>6s}  states"
          f"{'':32s} est.")
    for c in CASES:
        if suite and suite not in c.suites:
            continue
        est = estimate_s(c, num_images)
        for s in c.suites:
            total[s] = total.get(s, 0.0) + est
        print(f"{c.name:28s} {','.join(c.suites):11s} {'+'.join(c.maps)[:9]:9s} {c.box:4d} {c.pixel_A:6.2f} "
              f"{c.snr:5g} {c.n:6d}  {c.states_label:38s} {est / 60:5.1f} min")
    print("estimated total: " + ", ".join(f"{s} {t / 3600:.1f} h ({t / 60:.0f} min)" for s, t in total.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("smoke", "full", "check"), default="smoke",
                   help="smoke (3 cases, <= 20 min), full (hours, see --list), check (the harness's 1-minute check)")
    p.add_argument("--cases", default="", help="comma-separated case names (any suite's); default: the suite's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=WORKDIR)
    p.add_argument("--num-images", type=int, default=None,
                   help="training budget for every case (NOT the default; marked in the report)")
    p.add_argument("--list", action="store_true", help="print the cases and estimated times, run nothing")
    p.add_argument("--out", type=Path, default=None, help="results stem (default benchmarks/results/matrix-SUITE)")
    args = p.parse_args(argv)
    if args.list:
        list_cases(None, args.num_images)
        return 0
    if not FIXTURES.is_dir():
        print(f"fixtures not found: {FIXTURES} (set CRYOFIRE_FIXTURES)", file=sys.stderr)
        return 2
    cases = suite_cases(args.suite, [n for n in args.cases.split(",") if n])
    stem = args.out or (report.RESULTS / f"matrix-{args.suite}")
    rows: list[dict] = []
    if args.cases and Path(f"{stem}.json").is_file():   # keep the other cases' latest rows
        try:
            rows = [r for r in json.loads(Path(f"{stem}.json").read_text())["rows"]
                    if r["name"] not in {c.name for c in cases}]
        except (OSError, ValueError, KeyError):
            rows = []
    order = {c.name: i for i, c in enumerate(CASES)}
    print(f"{len(cases)} case(s), estimated {sum(estimate_s(c, args.num_images) for c in cases) / 60:.0f} min",
          file=sys.stderr)
    for c in cases:
        print(f"[matrix] {c.name}: simulate {c.n} images, box {c.box}, {c.pixel_A:.2f} A, SNR {c.snr:g}, "
              f"{c.states_label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            row = run_case(c, args.workdir, args.threads, args.num_images)
        except Exception as exc:  # one broken case must not lose the others' rows
            row = dict(case_row(c, args.num_images), error=f"{type(exc).__name__}: {exc}", verdict="n/a",
                       truly_converged=None)
        row["case_wall_s"] = time.perf_counter() - t0
        rows = sorted([r for r in rows if r["name"] != c.name] + [row], key=lambda r: order.get(r["name"], 1e9))
        write_results(args.suite, rows, args.threads, stem)
        e = row.get("eval") or {}
        print(f"[matrix] {c.name}: view {_f(e.get('rot_view_median_deg'))} deg, confusion "
              f"{_f(e.get('confusion'), '{:.3f}')} (oracle {_f((row.get('oracle') or {}).get('confusion'), '{:.3f}')})"
              f", verdict {row.get('verdict')}, {_dur(row['case_wall_s'])}"
              + (f"  ERROR {row['error']}" if row.get("error") else ""), file=sys.stderr, flush=True)
    print("\n".join(markdown({"suite": args.suite, "rows": rows, "threads": args.threads,
                              "verdict_confusion": verdict_confusion(rows), **report.stamp()})))
    print(f"wrote {stem}.json and .md (work folder {args.workdir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
