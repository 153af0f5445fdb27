"""The Latent space dock and the seed's heterogeneity of issue 20, through the real widgets under Xvfb: a run whose seed
found a continuum is coloured by the seed's coordinate (chosen automatically, held-out particles grey) and its PC
trajectory still decodes; a run with three seed states colours all three; switching runs follows each run's answer,
but not over a colouring the user chose. Run folders from tests/seed_runs.py (no training)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.seed_runs import continuous_case, make_run, three_state_case

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent_seed")
    zc, ac, _ = continuous_case()
    z3, a3, _ = three_state_case()
    # the same continuous run, but from a seed that wrote no kind (K = 1 with coords: continuous all the same)
    ac_nokind = {k: v for k, v in ac.items() if k != "kind"}
    return {"continuous": (make_run(root / "cont", zc, ac), ac), "k3": (make_run(root / "k3", z3, a3), a3),
            "nokind": (make_run(root / "nokind", zc, ac_nokind), ac_nokind)}


def _open(opener, latent, qtbot, folder):
    latent.analysis = None
    opener.open(folder)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)


def _per_row_coord(arrays, n):
    c = np.full(n, np.nan, np.float32)
    c[arrays["index"]] = arrays["coords"][:, 0]
    return c


def test_continuous_seed_colours_by_coordinate_and_trajectory_decodes(make_napari_viewer, qtbot, runs):
    from cryofire_app.commands.gui import open_docks
    from cryofire_app.gui.latent_widget import CATEGORICAL, SEED_COORD, SEED_STATE, UNLABELLED_RGBA, coordinate_colors
    from cryofire_app.gui.volume_display import TRAJECTORY_LAYER

    viewer = make_napari_viewer()
    docks = open_docks(viewer)
    latent, opener = docks["Latent space"], docks["Open run"]
    combo = latent.color_combo
    coord_item = combo.model().item(combo.findText(SEED_COORD))
    state_item = combo.model().item(combo.findText(SEED_STATE))
    assert not coord_item.isEnabled() and not state_item.isEnabled()   # nothing open yet

    folder, arrays = runs["continuous"]
    _open(opener, latent, qtbot, folder)
    # K = 1 with coordinates: the seed's coordinate is the colouring the dock chooses
    assert coord_item.isEnabled() and state_item.isEnabled() and combo.currentText() == SEED_COORD
    n = len(latent.latents.z)
    coord = _per_row_coord(arrays, n)
    colors = latent.scatter.colors
    np.testing.assert_allclose(colors, coordinate_colors(coord))
    grey = np.all(np.isclose(colors, UNLABELLED_RGBA), axis=1)
    assert np.array_equal(grey, np.isnan(coord)) and grey.sum() == 40   # held-out particles grey, only they
    # a continuous colormap along the coordinate: its two ends are viridis' two ends (dark purple / yellow)
    lo, hi = np.nanargmin(coord), np.nanargmax(coord)
    assert colors[lo, 2] > colors[lo, 1] and colors[hi, 0] > 0.9 and colors[hi, 1] > 0.85
    assert len({tuple(c) for c in np.round(colors[~grey], 3)}) > 50
    status = latent.status.text()
    assert "continuous" in status and "2 coordinates" in status and "40 not classified" in status

    # the user picks "seed state": one state, one colour (the first cluster's), held-out grey; then back
    combo.setCurrentIndex(combo.findText(SEED_STATE))
    c = latent.scatter.colors
    np.testing.assert_allclose(c[~grey, :3], np.broadcast_to(CATEGORICAL[0], (int((~grey).sum()), 3)))
    combo.setCurrentIndex(combo.findText(SEED_COORD))
    np.testing.assert_allclose(latent.scatter.colors, colors)

    # the PC trajectory still decodes the motion: 3 volumes along PC1 from the run's decoder
    latent.pc_spin.setValue(1)
    latent.frames_spin.setValue(3)
    latent.traj_btn.click()
    qtbot.waitUntil(lambda: TRAJECTORY_LAYER in viewer.layers, timeout=60_000)
    traj = viewer.layers[TRAJECTORY_LAYER]
    vols = np.asarray(traj.metadata["volume"])
    assert vols.shape == (3, 16, 16, 16)
    zs = np.asarray(traj.metadata["z"])
    assert zs.shape == (3, latent.latents.z.shape[1])
    np.testing.assert_allclose(vols, opener.opened.run.decode(zs.astype(np.float32)), atol=1e-4)
    assert "PC1 trajectory: 3 volumes" in latent.status.text()


def test_three_states_and_switching_runs(make_napari_viewer, qtbot, runs):
    from cryofire_app.commands.gui import open_docks
    from cryofire_app.gui.latent_widget import (
        SEED_COORD,
        SEED_STATE,
        UNLABELLED_RGBA,
        categorical_colors,
        coordinate_colors,
    )

    viewer = make_napari_viewer()
    docks = open_docks(viewer)
    latent, opener = docks["Latent space"], docks["Open run"]
    combo = latent.color_combo
    folder, arrays = runs["k3"]
    _open(opener, latent, qtbot, folder)
    # K = 3 discrete states: "seed state" is chosen and colours all three as k-means clusters 0, 1, 2 are coloured
    assert combo.currentText() == SEED_STATE
    assert combo.model().item(combo.findText(SEED_COORD)).isEnabled()   # the file has a coordinate too
    n = len(latent.latents.z)
    per_row = np.full(n, -1)
    per_row[arrays["index"]] = arrays["state"]
    colors = latent.scatter.colors
    ref = categorical_colors(np.arange(10))
    for j in range(3):
        np.testing.assert_allclose(colors[per_row == j, :3], np.broadcast_to(ref[j, :3], ((per_row == j).sum(), 3)))
    assert len({tuple(c) for c in np.round(colors[per_row >= 0, :3], 4)}) == 3
    assert np.array_equal(np.all(np.isclose(colors, UNLABELLED_RGBA), axis=1), per_row < 0)
    counts = "/".join(f"{int((arrays['state'] == j).sum()):,}" for j in range(3))
    assert f"seed states {counts}" in latent.status.text()

    # another run whose seed found a continuum (no kind in its file): the colouring follows it
    _open(opener, latent, qtbot, runs["nokind"][0])
    assert combo.currentText() == SEED_COORD and latent.seed_kind == "continuous"
    # and back to the discrete run: seed states again
    _open(opener, latent, qtbot, folder)
    assert combo.currentText() == SEED_STATE
    # a colouring the user chose stays when runs change; a continuous run's coordinate is still one click away
    combo.setCurrentIndex(combo.findText("density"))
    _open(opener, latent, qtbot, runs["continuous"][0])
    assert combo.currentText() == "density"
    combo.setCurrentIndex(combo.findText(SEED_COORD))
    np.testing.assert_allclose(latent.scatter.colors,
                               coordinate_colors(_per_row_coord(runs["continuous"][1], len(latent.latents.z))))
