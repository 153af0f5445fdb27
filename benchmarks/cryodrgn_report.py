"""The results of cryodrgn_compare.py: the comparison table, the markdown report, its notes, the files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from cryodrgn_costs import AbinitDefaults, n_train_split, ratio
from cryodrgn_runs import RESULTS


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
