"""The results of the benchmark matrix (matrix.py): the verdict against the truth, the markdown, the files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import report

VERDICTS = ("converged", "uncertain", "failed", "n/a")


def verdict_confusion(rows: list[dict]) -> dict:
    """Counts of the run's verdict (columns) against the truth (rows: "converged" / "not converged"), over the rows
    that have both; ``false_converged`` = verdict "converged" on a run that did not converge."""
    table = {t: {v: 0 for v in VERDICTS} for t in ("converged", "not converged")}
    for r in rows:
        t = r.get("truly_converged")
        if t is None:
            continue
        v = r.get("verdict") if r.get("verdict") in VERDICTS else "n/a"
        table["converged" if t else "not converged"][v] += 1
    return {"table": table, "false_converged": table["not converged"]["converged"],
            "false_failed": table["converged"]["failed"]}


def _f(v, fmt="{:.2f}", none="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return fmt.format(v)


def _dur(s):
    return "-" if s is None else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


def markdown(out: dict) -> list[str]:
    rows = out["rows"]
    lines = [f"# Benchmark matrix, suite `{out['suite']}` ({out['date']}, {out['host']}, {out['threads']} threads)", "",
             "Produced by `benchmarks/matrix.py`: each case simulated with `cryofire_app.simulate` (CTF 1-2.5 um, "
             "shifts <= 4 px) and solved by `cryofire train PARTICLES -o RUN --seed S` at the defaults, scored "
             "by `cryofire eval`. View / in-plane errors after global alignment with both hands; confusion = best PC1 "
             "thresholds of z (seed: the seed's own hard labels); oracle = Bayes MAP with the true poses, CTFs and "
             "maps (oracle.py); FSC 0.5 of the major state's decoded map against its truth ('-': below 0.5 from the "
             "first shell, or not computed). Truly converged = view median <= 3 deg at SNR >= 0.1, <= 5 deg at 0.05.",
             ""]
    header = ["case", "map", "box", "px (A)", "SNR", "N", "states", "view med/mean (deg)", "in-plane med (deg)",
              "trans med (px)", "confusion (PC1 / seed)", "oracle", "FSC0.5 major (A / px)",
              "explicit map FSC0.5 (px): run / true poses", "wall", "peak RSS",
              "verdict", "truth"]
    table = []
    for r in rows:
        c, e = r["case"], r.get("eval") or {}
        truth = {True: "converged", False: "not converged", None: "-"}[r.get("truly_converged")]
        table.append([
            r["name"] + (" *" if not r.get("at_defaults", True) else ""), c["maps"][0] if len(c["maps"]) == 1
            else "+".join(c["maps"]), c["box"], f"{r['pixel_A']:.2f}", f"{c['snr']:g}", f"{c['n']:,}",
            r.get("states", "-"),
            f"{_f(e.get('rot_view_median_deg'))} / {_f(e.get('rot_view_mean_deg'))}",
            _f(e.get("rot_inplane_median_deg")), _f(e.get("trans_median_px")),
            f"{_f(e.get('confusion'), '{:.3f}')} / {_f(e.get('confusion_seed_states'), '{:.3f}')}",
            _f((r.get("oracle") or {}).get("confusion"), "{:.3f}"),
            f"{_f(e.get('res_major_0.5_A'), '{:.1f}')} / {_f(e.get('res_major_0.5_px'))}",
            f"{_f((r.get('explicit_fsc') or {}).get('run_0.5_px'))} / "
            f"{_f((r.get('explicit_fsc') or {}).get('true_poses_0.5_px'))}",
            _dur((r.get("train") or {}).get("wall_s")),
            _f((r.get("train") or {}).get("peak_rss_mb"), "{:.0f} MB"),
            r.get("verdict", "n/a") + (f" (status {r['train']['exit_status']})" if r.get("train", {}).get(
                "exit_status") else ""), truth])
    lines += report.md_table(header, table)
    vc = out["verdict_confusion"]
    lines += ["", f"Verdict against the truth ({vc['false_converged']} false \"converged\", {vc['false_failed']} "
              "false \"failed\"):", ""]
    lines += report.md_table(["truth \\ verdict", *VERDICTS],
                             [[t, *[vc["table"][t][v] for v in VERDICTS]] for t in vc["table"]])
    nd = [f"`{r['name']}` (--num-images {r.get('case_num_images')})" for r in rows if not r.get("at_defaults", True)]
    lines += ["", "Not at defaults: " + (", ".join(nd) + " (marked *): a smaller training budget than the default"
                                         if nd else "none (every case at the default image budget, 20 passes).")]
    notes = [f"- `{r['name']}`: {r['case']['note']}" for r in rows if r["case"].get("note")]
    notes += [f"- `{r['name']}`: {r['error']}" for r in rows if r.get("error")]
    assumed = sorted({(r["case"]["maps"][0], r["map_apix"], r["apix_note"]) for r in rows
                      if not r["apix_note"].startswith("header")})
    notes += [f"- pixel size of `{m}`: {a:g} A/voxel, {n}" for m, a, n in assumed]
    if notes:
        lines += ["", "Notes:", *notes]
    reasons = [f"- `{r['name']}` {r['verdict']}: " + "; ".join(r["verdict_report"]["reasons"]) for r in rows
               if r.get("verdict_report", {}).get("reasons") and r.get("verdict") != "n/a"]
    if reasons:
        lines += ["", "The runs' own reasons:", *reasons]
    lines += ["", f"Commit(s): {', '.join(sorted({r['commit'] for r in rows}))}."]
    return lines


def write_results(suite: str, rows: list[dict], threads: int, path_stem: Path | None = None) -> Path:
    from cryofire_app.training.checkpoint import atomic_write_text

    st = report.stamp()
    out = {"suite": suite, "date": st["date"], "host": st["host"], "threads": threads, "rows": rows,
           "verdict_confusion": verdict_confusion(rows)}
    stem = path_stem or (report.RESULTS / f"matrix-{suite}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(f"{stem}.json"), json.dumps(out, indent=1, default=str) + "\n")
    atomic_write_text(Path(f"{stem}.md"), "\n".join(markdown(out)) + "\n")
    return stem
