"""Heterogeneity suite (issue 20): continuous motions and K discrete states, on training AND new particles.

Per case: simulate a training set and a set of new particles (same maps and motion, another seed) with the project's
simulator from a fixture map, train with plain ``cryofire train PARTICLES.star -o RUN --seed S`` (the defaults),
infer the new particles with ``cryofire infer``, and score against the simulator's truth:
- continuous hinge: |Spearman| of PC1 of z against the hinge coordinate, and of the best 1-D latent coordinate (the
  best of z's PCs 1-3 and of z's own axes), on training and on new particles; the seed's own coordinate (training);
- K states: K-class confusion of k-means (k = K, true K given) on z, training and new; of the seed's labels
  (training) and the number of states the seed chose;
- new particles also with ``cryofire infer --refine-z 30`` (semi-amortized z);
- ceiling: the same residual analysis (reconstruct.hetero) run at the TRUE poses (``--no-ceiling`` skips it).

    nice -n 10 python benchmarks/hetero.py --cases 70s-cont,70s-k3      # ~30-60 min per case on 2 cores
    nice -n 10 python benchmarks/hetero.py --ceiling-only              # the true-pose analysis alone, ~1-2 min/case
    python benchmarks/hetero.py --list

Results: benchmarks/results/hetero.json and .md (rows of other cases already there are kept). Work folder:
benchmarks/work/hetero (gitignored).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402,F401  (puts the project root on sys.path)
from matrix import FIXTURES, MAPS, _git_commit, run_train  # noqa: E402

WORKDIR = HERE / "work" / "hetero"
RESULTS = HERE / "results" / "hetero"
DEFAULT_CASES = "70s-cont,70s-k3"
REFINE_STEPS = 30   # cryofire infer --refine-z for the new particles' semi-amortized z


@dataclass(frozen=True)
class Case:
    """``kind``: 'continuous' (uniform hinge angle in [0, angle]), 'discrete' (``steps`` hinge states) or 'none' (one
    state: the analysis must find no heterogeneity)."""

    name: str
    map: str
    kind: str
    steps: int = 0
    fractions: tuple[float, ...] | None = None
    box: int = 64
    n: int = 5000
    n_new: int = 1000
    snr: float = 0.1
    angle: float = 30.0
    seed: int = 0


CASES = [
    Case("70s-cont", "70s", "continuous", 8),
    Case("70s-k3", "70s", "discrete", 3, (0.5, 0.3, 0.2)),
    Case("70s-9010", "70s", "discrete", 2, (0.9, 0.1)),
    Case("emd0409-cont", "emd0409", "continuous", 8),
    Case("emd0409-k4", "emd0409", "discrete", 4, (0.4, 0.3, 0.2, 0.1)),
    Case("70s-k16", "70s", "discrete", 16),
    Case("70s-k4", "70s", "discrete", 4, (0.4, 0.3, 0.2, 0.1)),
    Case("70s-k8", "70s", "discrete", 8),
    Case("70s-none", "70s", "none"),
    Case("emd0409-9010", "emd0409", "discrete", 2, (0.9, 0.1)),
    Case("emd0409-none", "emd0409", "none"),
    Case("tubulin-cont", "tubulin", "continuous", 8),
    Case("tubulin-k3", "tubulin", "discrete", 3, (0.5, 0.3, 0.2)),
    Case("emd25892-cont", "emd25892", "continuous", 8),
    Case("emd25892-k3", "emd25892", "discrete", 3, (0.5, 0.3, 0.2)),
    Case("emd25892-none", "emd25892", "none"),
    Case("template-9010", "template", "discrete", 2, (0.9, 0.1)),
    Case("template-cont", "template", "continuous", 8),
    Case("template-k3", "template", "discrete", 3, (0.5, 0.3, 0.2)),
    Case("spike-cont", "spike", "continuous", 8),
]
CEILING_CASES = [c.name for c in CASES]


def simulate_set(case: Case, out: Path, n: int, seed: int) -> None:
    from cryofire_app.simulate import HingeConfig, SimulationConfig, simulate

    if (out / "particles.star").is_file() and (out / "labels.npy").is_file():
        return
    spec = MAPS[case.map]
    hinge = (HingeConfig() if case.kind == "none" else
             HingeConfig(steps=case.steps, continuous=case.kind == "continuous", angle_deg=case.angle))
    simulate(SimulationConfig(outdir=str(out), n=n, maps=[str(FIXTURES / spec.path)], apix=spec.apix, box=case.box,
                              snr=case.snr, fractions=case.fractions, defocus_um=(1.0, 2.5), max_shift_px=4.0,
                              seed=seed, hinge=hinge, progress=False, overwrite=True))


def truth(data: Path) -> tuple[np.ndarray, np.ndarray | None]:
    cont = data / "labels_continuous.npy"
    return np.load(data / "labels.npy"), (np.load(cont) if cont.is_file() else None)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(abs(spearmanr(a, b)[0]))


def latent_scores(z: np.ndarray, labels: np.ndarray, u: np.ndarray | None, K: int, pca=None) -> tuple[dict, object]:
    """Spearman of PC1 / best coordinate (continuous) or k-means confusion (discrete) of ``z``; ``pca`` fitted on
    the training z is reused for new particles."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from cryofire_app.analysis.metrics import label_confusion

    if pca is None:
        pca = PCA(min(3, z.shape[1])).fit(z)
    pcs = pca.transform(z)
    out = {}
    if u is not None:
        out["spearman_pc1"] = _spearman(pcs[:, 0], u)
        out["spearman_best"] = max([_spearman(pcs[:, j], u) for j in range(pcs.shape[1])]
                                   + [_spearman(z[:, j], u) for j in range(z.shape[1]) if z[:, j].std() > 0])
    else:
        km = KMeans(K, n_init=10, random_state=0).fit(z)
        out["confusion_kmeans"] = label_confusion(km.labels_, labels)["confusion"]
    return out, pca


def ceiling(data: Path, K: int, u: np.ndarray | None, labels: np.ndarray) -> dict:  # u None: score as states
    """The seed's residual analysis at the true poses (at the seed's heterogeneity box and radius defaults)."""
    import torch

    from cryofire_app.analysis.metrics import label_confusion
    from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl
    from cryofire_app.reconstruct import SeedConfig
    from cryofire_app.reconstruct.data import prepare_particles, stage_data
    from cryofire_app.reconstruct.hetero import HeteroConfig, analyse
    from cryofire_app.reconstruct.search import backproject
    from cryofire_app.reconstruct.volume import HartleyAccumulator

    imgs = read_mrc(data / "particles.mrcs")[0]
    rot, tr = read_pose_pkl(data / "poses.pkl")
    D = imgs.shape[-1]
    sc = SeedConfig()
    dh = min(sc.box_hetero, D)
    parts = prepare_particles(imgs, read_ctf_pkl(data / "ctf.pkl"))
    sd = stage_data(parts, dh, sc.hetero_radius_frac * dh / 2)
    R = torch.as_tensor(rot, dtype=torch.float32)
    T = torch.as_tensor(tr * D, dtype=torch.float32) * dh / D
    acc = HartleyAccumulator(dh)
    backproject(acc, sd, R, T)
    vol, _ = acc.solve(float(sd.Y.var()), mask_radius=sc.mask_radius_frac * dh / 2)
    t0 = time.perf_counter()
    res = analyse(sd, R, T, vol, HeteroConfig(max_components=sc.hetero_components, max_states=sc.hetero_max_states))
    out = {"kind": res.kind, "n_states": res.n_states, "n_coords": int(res.coords.shape[1]),
           "reproducibility": [c["reproducibility"] for c in res.components], "wall_s": time.perf_counter() - t0}
    if u is not None and res.coords.shape[1]:
        out["spearman_coord1"] = _spearman(res.coords[:, 0], u)
    if u is None and labels.max() > 0:
        out["confusion_labels"] = label_confusion(res.labels, labels)["confusion"]
    return out


def ceiling_only(names: list[str]) -> list[dict]:
    """The true-pose analysis alone on each case's training set (minutes per case): does the seed's heterogeneity
    step find the right kind and number of states on many molecules?"""
    rows = []
    for c in [c for c in CASES if c.name in names]:
        data = WORKDIR / c.name / "train"
        simulate_set(c, data, c.n, c.seed)
        labels, u = truth(data)
        u = u if c.kind == "continuous" else None
        row = {"case": asdict(c), "ceiling": ceiling(data, c.steps, u, labels)}
        print(json.dumps(row, default=float), flush=True)
        rows.append(row)
    return rows


def ceiling_markdown(rows: list[dict]) -> str:
    lines = ["# Heterogeneity step at the true poses (benchmarks/hetero.py --ceiling-only)", "",
             "Box 64, SNR 0.1, 5,000 images, 30-degree hinge of part of each map (or no motion). What the seed's "
             "heterogeneity step finds when the poses are right.", "",
             "| case | truth | found | K | coordinates | across-half correlations | accuracy | time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, e = r["case"], r["ceiling"]
        truth_ = {"continuous": "continuous", "none": "none"}.get(c["kind"], f"{c['steps']} states "
                                                                      f"{c['fractions'] or 'equal'}")
        acc = (f"coord1 |Spearman| {_f(e.get('spearman_coord1'))}" if c["kind"] == "continuous" else
               f"confusion {_f(e.get('confusion_labels'), '{:.1%}')}" if c["kind"] == "discrete" else "-")
        lines.append(f"| {c['name']} | {truth_} | {e['kind']} | {e['n_states']} | {e['n_coords']} | "
                     f"{', '.join(f'{x:.2f}' for x in e['reproducibility'])} | {acc} | {e['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n"


INFER_RUNS = (("pred_new", []), ("pred_new_refined", ["--refine-z", str(REFINE_STEPS)]),
              ("pred_new_encoder", ["--z-from", "encoder"]))


def infer_new(run: Path, new_d: Path, cdir: Path, threads: int) -> str | None:
    """`cryofire infer` of the new particles as a user would (z on the seed's basis), with --refine-z, and with the
    encoder's z alone, into cdir/pred_new*; an error text, or None."""
    from cryofire_app.cli import main as cli

    for name, extra in INFER_RUNS:
        rc = cli(["infer", str(run), str(new_d / "particles.star"), "-o", str(cdir / name), "--threads",
                  str(threads), *extra])
        if rc != 0:
            return " ".join(["infer", *extra, f"exited {rc}"])
    return None


def seed_scores(run: Path, u: np.ndarray | None, labels: np.ndarray) -> dict | None:
    """The seed's own heterogeneity (seed_states.npz) scored on the training particles it saw: its kind, number of
    states and coordinates, |Spearman| of its first coordinate against the hinge (u given) or its labels' confusion."""
    from cryofire_app.analysis.metrics import label_confusion

    ss = run / "seed_states.npz"
    if not ss.is_file():
        return None
    with np.load(ss) as f:
        idx, st = f["index"], f["state"]
        coords = f["coords"] if "coords" in f.files else None
        kind = str(f["kind"]) if "kind" in f.files else None
    out = {"kind": kind, "n_states": int(st.max()) + 1, "n_coords": 0 if coords is None else int(coords.shape[1])}
    if u is not None and coords is not None and coords.shape[1]:
        out["spearman_coord1"] = _spearman(coords[:, 0], u[idx])
    if u is None and st.max() > 0:
        out["confusion_labels"] = label_confusion(st, labels[idx])["confusion"]
    return out


def state_answer(run: Path, pred_new: Path, labels: np.ndarray, labels_new: np.ndarray) -> dict | None:
    """The run's own state answer, as `cryofire analyze` writes it (seed_states/labels.npy: the seed's labels where
    it searched, the state at the final pose elsewhere) for the training particles, and `cryofire infer`'s
    ``state`` for the new ones, scored as K-class confusion; None when the seed found no discrete states."""
    from cryofire_app.analysis.metrics import label_confusion
    from cryofire_app.analysis.run import Run

    r = Run(run)
    seeds = r.seed_states
    if seeds is None or seeds.n_states < 2:
        return None
    per_row = seeds.labels_for_rows(len(r.index))
    has = per_row >= 0
    out = {"train": label_confusion(per_row[has], labels[r.index[has]])["confusion"], "train_n": int(has.sum())}
    with np.load(pred_new / "latents.npz") as f:
        if "state" in f.files:
            out["new"] = label_confusion(f["state"], labels_new[f["index"]])["confusion"]
    return out


def run_case(case: Case, threads: int, with_ceiling: bool) -> dict:
    import shutil

    cdir = WORKDIR / case.name
    train_d, new_d, run = cdir / "train", cdir / "new", cdir / "run"
    simulate_set(case, train_d, case.n, case.seed)
    simulate_set(case, new_d, case.n_new, case.seed + 100)
    row: dict = {"case": asdict(case)}
    if run.exists():
        shutil.rmtree(run)
    row["train"] = run_train([str(train_d / "particles.star"), "-o", str(run), "--seed", str(case.seed + 1),
                              "--threads", str(threads), "--quiet"], cdir / "train.log", threads)
    if row["train"]["exit_status"] != 0:
        row["error"] = f"train exited {row['train']['exit_status']}"
        return row
    err = infer_new(run, new_d, cdir, threads)
    if err:
        row["error"] = err
        return row
    labels, u = truth(train_d)
    labels_new, u_new = truth(new_d)
    if case.kind != "continuous":   # discrete hinge steps also carry a hinge coordinate: score them as states
        u = u_new = None
    K = case.steps
    with np.load(run / "latents.npz") as f:
        z = f["z"]
        z_enc = f["z_encoder"] if "z_encoder" in f.files else z
    z_new = np.load(cdir / "pred_new" / "latents.npz")["z"]
    row["train_z"], pca = latent_scores(z, labels, u, K)
    row["new_z"], _ = latent_scores(z_new, labels_new, u_new, K, pca)
    # the encoder's z head alone (before the seed basis gave z_0..z_{q-1}), train and new
    row["train_z_encoder"], pca_e = latent_scores(z_enc, labels, u, K)
    z_new_e = np.load(cdir / "pred_new_encoder" / "latents.npz")["z"]
    row["new_z_encoder"], _ = latent_scores(z_new_e, labels_new, u_new, K, pca_e)
    z_ref = np.load(cdir / "pred_new_refined" / "latents.npz")["z"]
    row["new_z_refined"], _ = latent_scores(z_ref, labels_new, u_new, K, pca)
    if case.kind != "continuous":
        row["states"] = state_answer(run, cdir / "pred_new", labels, labels_new)
    seed = seed_scores(run, u, labels)
    if seed is not None:
        row["seed"] = seed
    rep = run / "report.json"
    row["verdict"] = json.loads(rep.read_text()).get("verdict") if rep.is_file() else None
    if with_ceiling:
        row["ceiling"] = ceiling(train_d, K, u, labels)
    return row


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def _states(st: dict | None) -> str:
    """The run's state answer's confusion (train over its labelled particles / new), or '-'."""
    if not st:
        return "-"
    return f"{_f(st.get('train'), '{:.1%}')} ({st.get('train_n')}) / {_f(st.get('new'), '{:.1%}')}"


def markdown(rows: list[dict]) -> str:
    lines = ["# Heterogeneity suite (benchmarks/hetero.py)", "",
             "Defaults, from scratch, 2 CPU cores. Continuous: |Spearman| against the hinge coordinate "
             "(PC1 of z / best 1-D latent coordinate / the seed's first coordinate / the same analysis at the true "
             "poses). Discrete: confusion of k-means (true K) on z, of the run's state answer (`cryofire analyze`'s "
             "seed_states/labels.npy for the training particles, `cryofire infer`'s state for new ones), of the "
             "seed's labels, and at the true poses; K chosen by the seed.",
             "z is what `cryofire train` / `cryofire infer` write (z_0..z_{q-1} on the seed's heterogeneity "
             "basis at each particle's pose); 'encoder' is the encoder's z head alone (`--z-from encoder`).",
             "", "| case | train z | new z | new z, --refine-z 30 | train z (encoder) | new z (encoder) "
             "| states: train / new | seed (train) | true-pose ceiling | verdict | wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["case"]
        if "error" in r:
            lines.append(f"| {c['name']} | {r['error']} | | | | | | | | | |")
            continue
        tz, nz, sd, ce = r["train_z"], r["new_z"], r.get("seed", {}), r.get("ceiling", {})
        if c["kind"] == "continuous":
            cell = lambda d: f"PC1 {_f(d.get('spearman_pc1'))}, best {_f(d.get('spearman_best'))}"  # noqa: E731
            seed = (f"{sd.get('kind')}, K={sd.get('n_states')}, q={sd.get('n_coords')}, "
                    f"coord1 {_f(sd.get('spearman_coord1'))}")
            ceil = f"{ce.get('kind')}, coord1 {_f(ce.get('spearman_coord1'))}" if ce else "-"
        else:
            cell = lambda d: f"confusion {_f(d.get('confusion_kmeans'), '{:.1%}')}"  # noqa: E731
            seed = f"{sd.get('kind')}, K={sd.get('n_states')}, labels {_f(sd.get('confusion_labels'), '{:.1%}')}"
            ceil = (f"{ce.get('kind')}, K={ce.get('n_states')}, {_f(ce.get('confusion_labels'), '{:.1%}')}"
                    if ce else "-")
        lines.append(f"| {c['name']} ({c['kind']}, {c['steps']} steps, box {c['box']}, SNR {c['snr']}) | {cell(tz)} | "
                     f"{cell(nz)} | {cell(r.get('new_z_refined', {}))} | {cell(r.get('train_z_encoder', {}))} | "
                     f"{cell(r.get('new_z_encoder', {}))} | {_states(r.get('states'))} | {seed} | {ceil} | "
                     f"{r.get('verdict')} | "
                     f"{r['train']['wall_s'] / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--list", action="store_true")
    p.add_argument("--ceiling-only", action="store_true",
                   help="only the true-pose heterogeneity analysis, on every case (or --cases); results in "
                        "hetero-ceiling.json/.md")
    a = p.parse_args(argv)
    if a.list:
        for c in CASES:
            print(c.name, c.kind, c.steps, c.fractions)
        return 0
    import torch

    from cryofire_app.io.atomic import atomic_write_text

    torch.set_num_threads(a.threads)
    if a.ceiling_only:
        names = a.cases.split(",") if a.cases != DEFAULT_CASES else CEILING_CASES
        rows = ceiling_only(names)
        stem = RESULTS.with_name("hetero-ceiling")
        atomic_write_text(stem.with_suffix(".json"), json.dumps({"commit": _git_commit(), "rows": rows}, indent=1,
                                                                default=float))
        atomic_write_text(stem.with_suffix(".md"), ceiling_markdown(rows))
        return 0
    names = a.cases.split(",")
    unknown = [n for n in names if n not in {c.name for c in CASES}]
    if unknown:
        p.error(f"unknown case(s) {unknown}")
    path = RESULTS.with_suffix(".json")
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = {r["case"]["name"]: r for r in old}
    for c in [c for c in CASES if c.name in names]:
        row = run_case(c, a.threads, not a.no_ceiling)
        prev = rows.get(c.name, {})
        if "ceiling" not in row and "ceiling" in prev and prev["case"] == json.loads(json.dumps(row["case"])):
            row["ceiling"] = prev["ceiling"]   # --no-ceiling: the true-pose analysis of the same simulation stands
        rows[c.name] = row
        out = {"commit": _git_commit(), "rows": list(rows.values())}
        atomic_write_text(path, json.dumps(out, indent=1, default=float))
        atomic_write_text(RESULTS.with_suffix(".md"), markdown(out["rows"]))
        print(json.dumps(rows[c.name], default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
