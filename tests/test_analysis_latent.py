"""Latent analysis (PCA, k-means, PC trajectories, nearest points) and the PNG plots."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryofire_app.analysis import latent as L
from cryofire_app.analysis import plots
from cryofire_app.io.errors import InputError


def _two_blobs(seed=0, n=(300, 60), d=4):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.3, size=(n[0], d))
    b = rng.normal(0, 0.3, size=(n[1], d)) + np.array([4.0] + [0.0] * (d - 1))
    return np.vstack([a, b]), np.r_[np.zeros(n[0], int), np.ones(n[1], int)]


def test_pca_trajectory_runs_along_pc1():
    z, _ = _two_blobs()
    lp = L.fit_pca(z)
    assert lp.n_components == 4
    assert lp.explained_variance_ratio[0] > 0.8
    # PC1 is (+-) the first axis; the trajectory z = mean + t e_1
    t = np.array([-1.0, 0.0, 2.0])
    traj = lp.trajectory(1, t)
    assert np.allclose(traj[1], z.mean(0), atol=1e-5)
    step = traj[2] - traj[1]
    assert np.allclose(np.linalg.norm(step), 2.0, atol=1e-5)
    assert abs(step[0]) / np.linalg.norm(step) > 0.99
    # projecting the trajectory back gives t on PC1 and 0 elsewhere
    back = lp.pca.transform(traj)
    assert np.allclose(back[:, 0], t, atol=1e-5) and np.allclose(back[:, 1:], 0, atol=1e-5)
    with pytest.raises(ValueError):
        lp.trajectory(5, t)


def test_points_along_units():
    z, _ = _two_blobs()
    lp = L.fit_pca(z)
    t, pts = lp.points_along(1, n=5, lo=-2, hi=2, units="std")
    assert np.allclose(t, np.linspace(-2, 2, 5) * lp.std[0])
    assert pts.shape == (5, 4)
    t2, _ = lp.points_along(2, n=3)  # default: 5th..95th percentile of the particles on PC2
    assert t2[0] == pytest.approx(np.percentile(lp.scores[:, 1], 5))
    t3, _ = lp.points_along(1, n=2, lo=-1, hi=3, units="z")
    assert np.allclose(t3, [-1, 3])


def test_kmeans_separates_and_orders_by_size():
    z, lab = _two_blobs()
    km = L.kmeans(z, 2)
    assert km.sizes.tolist() == [300, 60]
    assert (km.labels == lab).all()
    assert np.allclose(km.centers[1][0], 4.0, atol=0.15)
    # the on-data centre is the particle nearest the mean
    assert np.linalg.norm(z[km.center_index[1]] - km.centers[1]) < 0.5
    with pytest.raises(ValueError):
        L.kmeans(z, 0)
    # a run stopped in its pose-only phase has one z for everybody: refused clearly, PCA reports zero variance
    flat = np.ones((50, 3))
    with pytest.raises(ValueError, match="distinct"):
        L.kmeans(flat, 2)
    assert np.all(L.fit_pca(flat).explained_variance_ratio == 0)


def test_group_centers_are_means_and_nearest_particles():
    z = np.array([[0.0, 0.0], [2.0, 0.0], [1.2, 0.1], [10.0, 10.0], [12.0, 10.0], [50.0, 50.0]])
    lab = np.array([0, 0, 0, 1, 1, -1])   # -1: not in any group (ignored)
    centers, idx = L.group_centers(z, lab, 2)
    np.testing.assert_allclose(centers, [[3.2 / 3, 0.1 / 3], [11.0, 10.0]], atol=1e-6)
    assert centers.dtype == np.float32 and idx.tolist() == [2, 3]
    with pytest.raises(ValueError, match="no points"):
        L.group_centers(z, lab, 3)


def test_nearest_points_and_z_parsing():
    z = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    idx, dist = L.nearest_points(z, [[0.9, 1.2], [6, 6]])
    assert idx.tolist() == [1, 2]
    assert np.allclose(dist, [np.hypot(0.1, 0.2), np.sqrt(2)])
    assert L.parse_z_values("1,2;3,4", 2).tolist() == [[1, 2], [3, 4]]
    assert L.parse_z_values("0.5", 1).shape == (1, 1)
    with pytest.raises(ValueError):
        L.parse_z_values("1,2,3", 2)
    with pytest.raises(ValueError):
        L.parse_z_values("1,a", 2)
    with pytest.raises(ValueError):
        L.fit_pca(np.zeros((0, 3)))


def _is_png(path):
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    log = tmp_path / "log.jsonl"
    with open(log, "w") as fh:
        fh.write(json.dumps({"event": "Started", "n_train": 10}) + "\n")
        for i in range(200):
            fh.write(json.dumps({"event": "Step", "step": i, "images_seen": 8 * (i + 1), "loss": 1.0 / (i + 1)}) + "\n")
        fh.write(json.dumps({"event": "Checkpoint", "images_seen": 1600, "val_loss": 0.02}) + "\n")
        fh.write('{"event": "Step", "images_se')  # torn last line after a kill
    curve = plots.read_loss_log(log)
    assert len(curve["loss"]) == 200 and curve["val_loss"].tolist() == [0.02]
    assert _is_png(plots.plot_loss(log, tmp_path / "loss.png"))
    z, lab = _two_blobs()
    lp = L.fit_pca(z)
    km = L.kmeans(z, 2)
    p = plots.plot_pc_scatter(lp.scores, tmp_path / "pc.png", labels=km.labels,
                              centers=lp.pca.transform(km.centers), explained=lp.explained_variance_ratio)
    assert _is_png(p)
    assert _is_png(plots.plot_pc_scatter(lp.scores[:, :1], tmp_path / "pc1.png"))
    rot = Rotation.random(500, random_state=0).as_matrix()
    assert _is_png(plots.plot_view_distribution(rot, tmp_path / "views.png"))
    az, el = plots.viewing_directions(np.eye(3)[None])
    assert el[0] == pytest.approx(90.0)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    with pytest.raises(InputError):
        plots.plot_loss(tmp_path / "missing.jsonl", tmp_path / "x.png")
