"""`cryofire analyze` on run folders whose seed found a continuum (K = 1 with coordinates) or three states (issue 20):
k chosen from z by default, no k-means volumes for k = 1 but PCA and the PC walks, per-state outputs for any K, the
seed's coordinate beside z's PCs (CSV, Spearman in summary.json, volumes along it). Run folders come from
tests/seed_runs.py (a random model at box 16, no training: seconds)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from cryofire_app.cli import main as cli
from tests.seed_runs import continuous_case, make_run, three_state_case


@pytest.fixture(scope="module")
def continuous_run(tmp_path_factory):
    z, arrays, t = continuous_case()
    return make_run(tmp_path_factory.mktemp("cont") / "run", z, arrays), arrays


@pytest.fixture(scope="module")
def three_state_run(tmp_path_factory):
    z, arrays, truth = three_state_case()
    return make_run(tmp_path_factory.mktemp("k3") / "run", z, arrays), arrays


def test_continuous_seed_gives_its_coordinate_and_no_clusters(continuous_run, tmp_path, capsys):
    from cryofire_app.analysis.latent import fit_pca
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_mrc

    run_dir, arrays = continuous_run
    out = tmp_path / "an"
    capsys.readouterr()
    assert cli(["analyze", str(run_dir), "--n", "3", "-o", str(out)]) == 0   # -k auto is the default
    printed = capsys.readouterr().out
    summ = json.loads((out / "summary.json").read_text())
    run = Run(run_dir)
    # k chosen from z: a line is one population, so no k-means clusters; PCA and the PC walks are still there
    kc = summ["k_choice"]
    assert kc["requested"] == "auto" and kc["k"] == 1 and "rule" in kc and kc["reason"]
    assert "kmeans" not in summ and not list(out.glob("kmeans*"))
    assert summ["state_source"] is None
    assert len(list((out / "pc1").glob("vol_*.mrc"))) == 3 and (out / "pc_scatter.png").is_file()
    assert "k = 1 chosen from z" in printed and "no k-means clusters (k = 1)" in printed
    # the seed: one state, continuous; no per-state volumes or selections, the coordinate instead
    ss = summ["seed_states"]
    assert ss["kind"] == "continuous" and ss["n_states"] == 1 and ss["n_coordinates"] == 2
    assert "seed_state_volumes" not in summ["files"] and "seed_state_selections" not in summ["files"]
    assert not list((out / "seed_states").glob("state_*")) and not list((out / "seed_states").glob("vol_*"))
    assert "no discrete states (continuous, 2 continuous coordinate(s)" in printed
    n = len(run.z)
    coords = np.load(out / "seed_states" / "coords.npy")
    assert coords.shape == (n, 2)
    np.testing.assert_array_equal(coords[arrays["index"]], arrays["coords"])
    held = np.setdiff1d(np.arange(n), arrays["index"])
    assert np.all(np.isnan(coords[held]))
    # Spearman of coordinate 1 against PC1, as scipy computes it over the classified particles
    pc = fit_pca(run.z).scores
    rows = np.sort(arrays["index"])
    rho = spearmanr(coords[rows, 0], pc[rows, 0]).statistic
    co = ss["coordinates"]
    assert co["spearman_coord1_pc1"] == pytest.approx(rho, abs=1e-9) and abs(rho) > 0.95
    assert co["best_pc_for_coord1"] == 1 and len(co["spearman_pc"]) == 2
    assert f"Spearman {rho:+.3f}" in printed
    # the CSV: one line per classified particle, coordinates beside the PCs
    lines = (out / "seed_states" / "seed_coords.csv").read_text().splitlines()
    assert lines[0] == "row,particle_index,seed_state,seed_coord_1,seed_coord_2,pc1,pc2,pc3,pc4"
    table = np.loadtxt(out / "seed_states" / "seed_coords.csv", delimiter=",", skiprows=1)
    assert len(table) == len(rows) and np.array_equal(table[:, 0], rows)
    assert np.array_equal(table[:, 1], run.index[rows])
    np.testing.assert_allclose(table[:, 3], coords[rows, 0], rtol=1e-5, atol=1e-5)
    # volumes along the seed's coordinate: the mean z of 3 equal-count bins of coordinate 1
    order = rows[np.argsort(coords[rows, 0], kind="stable")]
    for i, b in enumerate(np.array_split(order, 3)):
        vol = run.decode(run.z[b].mean(0, keepdims=True))[0]
        np.testing.assert_allclose(read_mrc(out / "seed_states" / "coord1" / f"vol_{i:03d}.mrc")[0], vol,
                                   atol=1e-5 * float(np.abs(vol).max()))
    assert co["coord1_bins"]["sizes"] == [len(b) for b in np.array_split(order, 3)]
    for png in ("seed_coord_vs_pc1.png", "pc_scatter_seed_coord.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_three_seed_states_and_three_clusters_chosen(three_state_run, tmp_path, capsys):
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_ind_pkl, read_mrc

    run_dir, arrays = three_state_run
    out = tmp_path / "an"
    capsys.readouterr()
    assert cli(["analyze", str(run_dir), "--pcs", "1", "--n", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    summ = json.loads((out / "summary.json").read_text())
    run = Run(run_dir)
    assert summ["k_choice"]["k"] == 3 and summ["kmeans"]["k"] == 3 and (out / "kmeans3" / "vol_002.mrc").is_file()
    assert summ["state_source"] == "seed_states"
    ss = summ["seed_states"]
    sizes = np.bincount(arrays["state"]).tolist()
    assert ss["n_states"] == 3 and ss["kind"] == "discrete" and ss["sizes"] == sizes
    assert f"states: from the ab initio seed's labels (seed_states.npz): sizes {sizes}" in printed
    for j in range(3):
        r = arrays["index"][arrays["state"] == j]
        vol = run.decode(run.z[r].mean(0, keepdims=True))[0]
        np.testing.assert_allclose(read_mrc(out / "seed_states" / f"vol_{j:03d}.mrc")[0], vol,
                                   atol=1e-5 * float(np.abs(vol).max()))
        assert np.array_equal(read_ind_pkl(out / "seed_states" / f"state_{j}.ind.pkl"), run.index[r])
    # k-means of z and the seed's states agree on these separated blobs (up to the numbering: both by size)
    km = np.load(out / "kmeans3" / "labels.npy")
    assert np.mean(km[arrays["index"]] == arrays["state"]) > 0.97
    assert ss["coordinates"]["q"] == 1 and abs(ss["coordinates"]["spearman_coord1_pc1"]) > 0.5
    assert not (out / "seed_states" / "coord1").exists()   # discrete states: their volumes, not a coordinate walk
    assert (out / "pc_scatter_seed_states.png").read_bytes()[:4] == b"\x89PNG"


def test_given_k_and_old_format(continuous_run, tmp_path, capsys):
    from tests.seed_runs import make_run

    run_dir, _ = continuous_run
    assert cli(["analyze", str(run_dir), "-k", "4", "--pcs", "", "--no-volumes", "-o", str(tmp_path / "k4")]) == 0
    summ = json.loads((tmp_path / "k4" / "summary.json").read_text())
    assert summ["k_choice"] == {"k": 4, "requested": 4, "reason": "given with -k 4"}
    assert summ["kmeans"]["k"] == 4 and summ["state_source"] == "kmeans"
    assert "the state split: the seed found no discrete states" in capsys.readouterr().out
    assert cli(["analyze", str(run_dir), "-k", "1", "--pcs", "", "--no-volumes", "-o", str(tmp_path / "k1")]) == 0
    assert "kmeans" not in json.loads((tmp_path / "k1" / "summary.json").read_text())
    capsys.readouterr()
    assert cli(["analyze", str(run_dir), "-k", "many", "-o", str(tmp_path / "bad")]) == 2
    assert "-k must be 'auto' or a number" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # a file from before issue 20 (two states, no coords, no kind): read as discrete, no coordinate outputs
    z, arrays, _ = three_state_case()
    old = {k: arrays[k] for k in ("index", "state", "state_score")}
    old["state"] = np.minimum(old["state"], 1)
    r = make_run(tmp_path / "old", z, old)
    assert cli(["analyze", str(r), "--pcs", "", "--no-volumes", "--no-star", "-o", str(tmp_path / "o")]) == 0
    summ = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summ["seed_states"]["kind"] == "discrete" and summ["seed_states"]["n_coordinates"] == 0
    assert "coordinates" not in summ["seed_states"]
    assert sorted(p.name for p in (tmp_path / "o" / "seed_states").iterdir()) == [
        "centers.txt", "labels.npy", "state_0.ind.pkl", "state_0_index.csv", "state_1.ind.pkl", "state_1_index.csv"]


def test_evaluate_reports_the_seed_coordinate_against_the_truth(continuous_run, three_state_run):
    """evaluate: |Spearman| of the seed's coordinate 1 (classified particles) and of z's best PC against ordered
    true labels, beside PC1's; the seed's K-state confusion for K = 3."""
    from cryofire_app.analysis import evaluate as E
    from cryofire_app.analysis.latent import fit_pca
    from cryofire_app.analysis.metrics import spearman
    from cryofire_app.analysis.run import Run

    z, arrays, t = continuous_case()
    run = Run(continuous_run[0])
    pred = E.predictions_from_run(run)
    n = len(t)
    assert pred.seed_coord.shape == (n,) and np.isnan(pred.seed_coord).sum() == 40
    steps = np.digitize(t, np.linspace(-1, 1, 9)[1:-1])   # 8 ordered hinge steps
    gt_rot = np.zeros((n + 1000, 3, 3))
    gt_rot[1000:] = run.rot
    labels = np.zeros(n + 1000, np.int64)
    labels[1000:] = steps
    res = E.evaluate(pred, gt_rot, gt_labels=labels)
    rows = np.sort(arrays["index"])
    assert res["spearman_seed_coord1"] == pytest.approx(spearman(pred.seed_coord[rows], steps[rows]), abs=1e-12)
    assert res["spearman_seed_coord1"] > 0.9 and res["seed_coord_n_images"] == len(rows)
    best = res["spearman_best_pc"]
    scores = fit_pca(run.z).scores
    assert best["pc"] == 1 and best["spearman"] == pytest.approx(spearman(scores[:, 0], steps), abs=1e-12)
    assert res["confusion_seed_states"] == pytest.approx(1 - np.max(np.bincount(steps[rows])) / len(rows))

    z3, a3, truth = three_state_case()
    run3 = Run(three_state_run[0])
    labels3 = np.zeros(len(truth) + 1000, np.int64)
    labels3[1000:] = truth
    gt3 = np.zeros((len(truth) + 1000, 3, 3))
    gt3[1000:] = run3.rot
    r3 = E.evaluate(E.predictions_from_run(run3), gt3, gt_labels=labels3)
    assert r3["confusion_seed_states"] == 0.0 and r3["seed_states_n_images"] == len(a3["index"])
