"""A seeded run's seed_states.npz as a first-class result: `cryofire demo` (seeded, toy size) reports the seed labels'
state confusion beside the z-PC1 one and writes its state maps from them; `cryofire analyze` writes per-state
selections and volumes; the Latent dock colours the scatter by seed state (real widgets under Xvfb).

One module-scoped toy demo (200 images, box 16, 640 training images, two states asked for with --states 2, ~20 s on
one thread) is the run for every test:
its bookkeeping is under test, not convergence (at this size the seed's labels are near chance).
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryofire_app.cli import main as cli


@pytest.fixture(scope="module")
def seeded_demo(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("seeded") / "demo"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = cli(["demo", "-o", str(out), "--n", "200", "--box", "16", "--minutes", "5", "--num-images", "640",
                  "--threads", "1", "--schedule", "seeded", "--states", "2"])
    assert rc == 0
    return out, text.getvalue()


def _seed_file(run_dir: Path) -> dict:
    with np.load(run_dir / "seed_states.npz") as f:
        return {k: f[k] for k in f.files}


def _labels_per_row(run_dir: Path, seeds: dict) -> np.ndarray:
    """Every run row's state: the seed's label where it has one, else latents.npz's state at the final pose."""
    with np.load(run_dir / "latents.npz") as f:
        per_row = f["state"].astype(np.int64)
    per_row[seeds["index"]] = seeds["state"]
    return per_row


def _copy_run(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst)
    return dst


def test_demo_reports_both_state_splits_and_writes_seed_state_maps(seeded_demo):
    from cryofire_app.analysis import hand
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_mrc, read_pose_pkl

    out, text = seeded_demo
    run = Run(out / "run")
    seeds = _seed_file(out / "run")
    labels = np.load(out / "data" / "labels.npy")
    # the seed labels' confusion, computed here directly: hard labels, the better of the two label numberings; the
    # seed's own labels where it searched, the others' (held out) from latents.npz's state at their final poses
    per_row = _labels_per_row(out / "run", seeds)
    wrong = float(np.mean(per_row != labels[run.index]))
    expected = min(wrong, 1 - wrong)
    res = json.loads((out / "eval.json").read_text())
    assert res["confusion_seed_states"] == pytest.approx(expected, abs=1e-12)
    assert res["seed_states_n_images"] == 200 > len(seeds["index"])   # every particle is classified
    summ = json.loads((out / "demo_summary.json").read_text())
    assert summ["confusion_seed_states"] == res["confusion_seed_states"]
    assert summ["confusion_z_pc1"] == summ["confusion"] == res["confusion"]
    assert summ["seed_state_sizes"] == np.bincount(per_row).tolist()
    assert summ["state_maps_from"] == "seed states"
    # the printed summary names both, each with its own number
    assert f"state confusion, seed labels  {expected:.1%}" in text
    assert f"state confusion, z PC1        {res['confusion']:.1%}" in text
    assert "confusion (seed labels)" in text   # the evaluation table's column
    # maps/state_<i>.mrc are the seed-state volumes (decoded at each state's mean z) in the simulation's hand
    flipped = summ["maps_mirrored"]
    for j in range(2):
        zj = run.z[per_row == j].mean(0, keepdims=True)
        vol = run.decode(zj.astype(np.float32))[0]
        np.testing.assert_allclose(read_mrc(out / "analysis" / "seed_states" / f"vol_{j:03d}.mrc")[0], vol,
                                   atol=1e-5 * float(np.abs(vol).max()))
        np.testing.assert_allclose(read_mrc(out / "maps" / f"state_{j}.mrc")[0],
                                   hand.mirror_volume(vol) if flipped else vol, atol=1e-5 * float(np.abs(vol).max()))
    rot, trans = read_pose_pkl(out / "maps" / "pose.pkl")
    np.testing.assert_allclose(rot, hand.mirror_rotations(run.rot) if flipped else run.rot, atol=1e-6)
    np.testing.assert_allclose(trans, run.trans / run.D, atol=1e-7)


def test_analyze_writes_seed_state_selections_and_volumes(seeded_demo, tmp_path, capsys):
    from cryofire_app.analysis.hand import mirror_rotations, mirror_volume
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_ind_pkl, read_mrc, read_star
    from cryofire_app.io.particles import load_particles

    out, _ = seeded_demo
    run = Run(out / "run")
    seeds = _seed_file(out / "run")
    an = tmp_path / "an"
    capsys.readouterr()
    assert cli(["analyze", str(out / "run"), "-k", "3", "--pcs", "1", "--n", "2", "-o", str(an), "--on-data",
                "--flip-hand"]) == 0
    printed = capsys.readouterr().out
    # the seed's own labels where it searched; every other particle (the held-out split) in the state of the
    # seed's mixture at its final pose, which latents.npz holds for every particle
    expect = _labels_per_row(out / "run", seeds)
    sizes = np.bincount(expect).tolist()
    assert f"states: from the ab initio seed's labels (seed_states.npz): sizes {sizes}" in printed
    summ = json.loads((an / "summary.json").read_text())
    assert summ["state_source"] == "seed_states" and summ["kmeans"]["k"] == 3   # z is analysed as before
    ss = summ["seed_states"]
    assert ss["sizes"] == sizes and ss["n_classified"] == 200 and ss["n_not_classified"] == 0
    assert ss["n_classified_by_seed"] == len(seeds["index"]) < 200
    per_row = np.load(an / "seed_states" / "labels.npy")
    assert np.array_equal(per_row, expect)
    # --on-data: each state's volume at the particle nearest the state's mean z; --flip-hand: mirrored
    centers = np.loadtxt(an / "seed_states" / "centers.txt", ndmin=2)
    orig = load_particles(out / "data" / "particles.star")
    for j in range(2):
        rows = np.flatnonzero(expect == j)
        mean = run.z[rows].mean(0)
        near = int(np.argmin(((run.z - mean) ** 2).sum(1)))
        assert ss["center_index"][j] == near and np.allclose(centers[j], run.z[near], atol=1e-5)
        vol = run.decode(run.z[near:near + 1])[0]
        np.testing.assert_allclose(read_mrc(an / "seed_states" / f"vol_{j:03d}.mrc")[0], mirror_volume(vol),
                                   atol=1e-5 * float(np.abs(vol).max()))
        # the state's selection: original indices, images, mirrored poses, class number j + 1
        assert np.array_equal(read_ind_pkl(an / "seed_states" / f"state_{j}.ind.pkl"), run.index[rows])
        back = load_particles(an / "seed_states" / f"state_{j}.star")
        assert len(back.index) == len(rows)
        assert np.array_equal(back.images[:3], orig.images[run.index[rows[:3]]])
        np.testing.assert_allclose(back.rots, mirror_rotations(run.rot[rows]), atol=1e-4)
        assert set(read_star(an / "seed_states" / f"state_{j}.star").column("rlnClassNumber")) == {j + 1}
        csv = (an / "seed_states" / f"state_{j}_index.csv").read_text().split()
        assert csv[0] == "index" and [int(v) for v in csv[1:]] == run.index[rows].tolist()
    assert (an / "pc_scatter_seed_states.png").read_bytes()[:4] == b"\x89PNG"
    # --no-star: index lists only, still one per state
    assert cli(["analyze", str(out / "run"), "-k", "2", "--pcs", "", "--no-volumes", "--no-star", "-o",
                str(tmp_path / "an2")]) == 0
    names = sorted(p.name for p in (tmp_path / "an2" / "seed_states").iterdir())
    assert names == ["centers.txt", "coords.npy", "labels.npy", "seed_coords.csv", "state_0.ind.pkl",
                     "state_0_index.csv", "state_1.ind.pkl", "state_1_index.csv"]   # + the seed's coordinates


def test_analyze_without_seed_states_and_with_malformed_ones(seeded_demo, tmp_path, capsys):
    out, _ = seeded_demo
    run_dir = _copy_run(out / "run", tmp_path / "run")
    good = _seed_file(run_dir)
    path = run_dir / "seed_states.npz"
    path.unlink()
    assert cli(["analyze", str(run_dir), "-k", "2", "--pcs", "", "--no-volumes", "--no-star", "-o",
                str(tmp_path / "plain")]) == 0
    summ = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summ["state_source"] == "kmeans" and "seed_states" not in summ
    assert not (tmp_path / "plain" / "seed_states").exists()
    assert "the state split: the run has no seed states" in capsys.readouterr().out

    n = len(good["index"])
    bad_cases = {
        "not an npz": None,
        "array(s) state_score missing": dict(index=good["index"], state=good["state"]),
        "differ in length": dict(good, state=good["state"][:-1]),
        "outside the rows": dict(good, index=good["index"] + 200),
        "more than once": dict(good, index=np.r_[good["index"][:-1], good["index"][0]]),
        "every state present": dict(good, state=2 * good["state"]),
        "finite": dict(good, state_score=np.full(n, np.nan, np.float32)),
    }
    for i, (problem, arrays) in enumerate(bad_cases.items()):
        if arrays is None:
            path.write_bytes(b"not a zip file at all")
        else:
            with open(path, "wb") as fh:
                np.savez(fh, **arrays)
        dest = tmp_path / f"bad{i}"
        assert cli(["analyze", str(run_dir), "--no-volumes", "-o", str(dest)]) == 2, problem
        err = capsys.readouterr().err
        assert str(path) in err and problem in err, (problem, err)
        assert not dest.exists()   # refused before writing anything


@pytest.mark.gui
def test_latent_dock_colours_by_seed_state(make_napari_viewer, qtbot, seeded_demo, tmp_path):
    from cryofire_app.commands.gui import open_docks
    from cryofire_app.gui.latent_widget import SEED_STATE, UNLABELLED_RGBA, categorical_colors

    out, _ = seeded_demo
    per_row = _labels_per_row(out / "run", _seed_file(out / "run"))   # every particle classified
    viewer = make_napari_viewer()
    docks = open_docks(viewer)
    latent, opener = docks["Latent space"], docks["Open run"]
    combo = latent.color_combo
    seed_item = combo.model().item(combo.findText(SEED_STATE))
    assert not seed_item.isEnabled()   # nothing open: no seed states to colour by

    opener.open(out / "run")
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    # a run with seed_states.npz: its state split is what the scatter shows first
    assert seed_item.isEnabled() and combo.currentText() == SEED_STATE
    colors = latent.scatter.colors
    grey = np.all(np.isclose(colors, UNLABELLED_RGBA), axis=1)
    assert np.array_equal(grey, per_row < 0)
    for j in range(2):   # state j has k-means cluster j's colour
        rgb = colors[per_row == j, :3]
        np.testing.assert_allclose(rgb, np.broadcast_to(categorical_colors(np.arange(10))[j, :3], rgb.shape))
    assert "seed states" in latent.status.text() and "not classified" not in latent.status.text()

    # the user picks k-means in the combo (as a click does): the clusters' colours, then back to the seed states
    combo.setCurrentIndex(combo.findText("k-means cluster"))
    np.testing.assert_allclose(latent.scatter.colors, categorical_colors(latent.analysis["clusters"]))
    assert not np.allclose(latent.scatter.colors, colors)
    combo.setCurrentIndex(combo.findText(SEED_STATE))
    np.testing.assert_allclose(latent.scatter.colors, colors)

    # a run without seed states: the choice is greyed out and the colouring falls back to k-means
    plain = _copy_run(out / "run", tmp_path / "plain")
    (plain / "seed_states.npz").unlink()
    latent.analysis = None
    opener.open(plain)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    assert not seed_item.isEnabled() and combo.currentText() == "k-means cluster"
    np.testing.assert_allclose(latent.scatter.colors, categorical_colors(latent.analysis["clusters"]))
    # a malformed file: the run still opens, and the Open-run dock says why there are no seed states
    (plain / "seed_states.npz").write_bytes(b"garbage")
    latent.analysis = None
    opener.open(plain)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    assert not seed_item.isEnabled()
    assert "seed states ignored" in opener.status.value and "seed_states.npz" in opener.status.value
    # and a good one again: the seed states come back as the colouring
    shutil.copy(out / "run" / "seed_states.npz", plain / "seed_states.npz")
    latent.analysis = None
    opener.open(plain)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    assert combo.currentText() == SEED_STATE and np.array_equal(
        np.all(np.isclose(latent.scatter.colors, UNLABELLED_RGBA), axis=1), per_row < 0)
