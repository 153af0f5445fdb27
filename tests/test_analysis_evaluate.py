"""Evaluation against ground truth on synthetic predictions with a known global transform and hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryofire_app.analysis import evaluate as E
from cryofire_app.analysis import metrics as M
from cryofire_app.io import write_mrc
from volumes import blob_volume


def _blob_volume(D, seed):
    return blob_volume(D, seed)


@pytest.mark.parametrize("flipped", [False, True])
def test_alignment_convention_matches_the_projector(flipped):
    """Images of the model volume at the predicted poses equal images of the GT at the GT poses exactly when the
    alignment maps the predictions onto the GT: ties metrics.align_rotations/rotate_volume to physics' projector."""
    from cryofire_app.physics import project_fourier, rotate_volume

    D = 32
    gt = _blob_volume(D, 1)
    A = Rotation.random(random_state=3).as_matrix() @ (np.diag([1.0, -1, 1]) if flipped else np.eye(3))
    model = M.rotate_volume(gt, np.linalg.inv(A))  # V_gt(x) = V_model(x A^T)
    # the same resampling as physics.rotate_volume (trilinear) up to interpolation error
    tri = rotate_volume(torch.as_tensor(gt), torch.as_tensor(np.linalg.inv(A))).numpy()
    assert np.abs(tri - M.rotate_volume(gt, np.linalg.inv(A), order=1)).max() < 1e-6 * np.abs(gt).max() + 1e-9
    G = Rotation.random(12, random_state=4).as_matrix()
    P = (M.FLIP if flipped else np.eye(3)) @ G @ np.linalg.inv(A)
    img_gt = project_fourier(torch.as_tensor(gt), torch.as_tensor(G)).numpy()
    img_model = project_fourier(torch.as_tensor(model), torch.as_tensor(P)).numpy()
    rel = np.linalg.norm(img_model - img_gt) / np.linalg.norm(img_gt)
    assert rel < 0.05
    al = M.align_rotations(P, G)
    assert al.flipped == flipped and np.allclose(al.A, A, atol=1e-8)


def test_evaluate_two_states_end_to_end(tmp_path):
    D, N = 32, 400
    rng = np.random.default_rng(0)
    maps = [_blob_volume(D, 10), _blob_volume(D, 11)]
    labels = np.r_[np.zeros(360, int), np.ones(40, int)]
    rng.shuffle(labels)
    G = Rotation.random(N, random_state=5).as_matrix()
    gt_trans_frac = rng.uniform(-0.05, 0.05, size=(N, 2))
    A = Rotation.random(random_state=6).as_matrix() @ np.diag([1.0, 1, -1])  # mirrored reconstruction
    P = M.FLIP @ G @ np.linalg.inv(A)
    model_maps = [-M.rotate_volume(m, np.linalg.inv(A)) for m in maps]  # inverted contrast too
    z = np.where(labels[:, None] == 1, 3.0, -1.0) * np.array([[1.0, 0.5]]) + 0.2 * rng.normal(size=(N, 2))
    z[:4] = np.array([3.0, 1.5])  # 4 class-0 particles embedded with class 1: confusion 1 %
    trans_px = gt_trans_frac * D + 0.1 * rng.normal(size=(N, 2))

    def decode(zq):
        return np.stack([model_maps[int(zz[0] > 1.0)] for zz in np.asarray(zq)]).astype(np.float32)

    pred = E.Predictions(rot=P, trans_px=trans_px, z=z.astype(np.float32), index=np.arange(N), D=D, apix=2.0)
    res = E.evaluate(pred, G, gt_trans_frac, gt_labels=labels, gt_maps=maps, decode=decode)
    assert res["alignment"]["flipped"]
    assert res["rot_view_median_deg"] < 1e-3
    assert res["trans_median_px"] == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.15)  # Rayleigh median ~0.118
    assert res["confusion"] == pytest.approx(4 / N)
    assert res["spearman_pc1"] > 0.5  # binary 90/10 states cap |rho| near 0.52
    assert res["fsc"]["maps"][0]["density_sign_inverted"]
    assert res["res_major_0.5_px"] < 2.5 and res["res_minor_0.5_px"] < 2.5
    assert res["res_major_0.5_A"] == pytest.approx(2.0 * res["res_major_0.5_px"])
    # a subset of particles (held-out split) maps to the GT rows through `index`
    sub = np.arange(0, N, 3)
    pred_sub = E.Predictions(rot=P[sub], trans_px=trans_px[sub], z=None, index=sub, D=D)
    r2 = E.evaluate(pred_sub, G, gt_trans_frac)
    assert r2["n_images"] == len(sub) and r2["rot_view_median_deg"] < 1e-3 and "confusion" not in r2
    # without labels: k-means centres matched to maps by FSC; maps read from disk
    for i, m in enumerate(maps):
        write_mrc(tmp_path / f"m{i}.mrc", m.astype(np.float32), apix=2.0)
    loaded = E.load_gt_maps([tmp_path / "m1.mrc", tmp_path / "m0.mrc"], D)
    r3 = E.evaluate(pred, G, gt_maps=loaded, decode=decode)
    assert all(m["res_0.5_px"] < 2.5 for m in r3["fsc"]["maps"])
    row = E.table_row(res)
    assert row["confusion"] == "0.0100"
    E.write_json(tmp_path / "r.json", dict(res, infinite=float("inf"), arr=np.arange(3)))
    back = __import__("json").loads((tmp_path / "r.json").read_text())
    assert back["infinite"] is None and back["arr"] == [0, 1, 2] and back["confusion"] == res["confusion"]


def test_predictions_from_a_damaged_latents_archive_name_the_file(tmp_path):
    """The Python API path (not only `cryofire eval`): a truncated latents.npz is an InputError naming it."""
    from cryofire_app.analysis.evaluate import predictions_from_pkls
    from cryofire_app.io.errors import InputError

    lat = tmp_path / "latents.npz"
    np.savez(lat, index=np.arange(4), z=np.zeros((4, 2)), rot=np.tile(np.eye(3), (4, 1, 1)), trans=np.zeros((4, 2)))
    lat.write_bytes(lat.read_bytes()[:200])
    with pytest.raises(InputError, match="latents.npz"):
        predictions_from_pkls(tmp_path, D=32)
