"""Metrics: rotation alignment (both hands), pose errors, confusion, Spearman, FSC, volume alignment."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryofire_app.analysis import metrics as M
from volumes import blob_volume


def _rots(n, seed):
    return Rotation.random(n, random_state=seed).as_matrix()


def _small_noise(rot, deg, seed):
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(len(rot), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dR = Rotation.from_rotvec(axes * np.radians(deg)).as_matrix()
    return dR @ rot


@pytest.mark.parametrize("n", [1, 7, 60, 500])
def test_alignment_recovers_global_rotation(n):
    G = _rots(n, 1)
    Q = _rots(1, 2)[0]
    P = G @ Q
    al = M.align_rotations(P, G)
    assert not al.flipped or n == 1  # with one particle both hands fit exactly
    err = M.rotation_errors(P, G, alignment=al)
    assert err["rot_view_median_deg"] < 1e-4
    assert err["rot_full_mean_deg"] < 1e-4
    assert err["rot_inplane_mean_deg"] < 1e-4


@pytest.mark.parametrize("n", [5, 300])
def test_alignment_detects_flipped_hand(n):
    G = _rots(n, 3)
    Q = _rots(1, 4)[0]
    Mirror = np.diag([-1.0, 1.0, 1.0]) @ _rots(1, 5)[0]  # an arbitrary improper matrix
    P = M.FLIP @ G @ Mirror @ Q
    assert np.allclose(np.linalg.det(P), 1.0)
    al = M.align_rotations(P, G)
    assert al.flipped
    assert np.linalg.det(al.A) < 0
    err = M.rotation_errors(P, G, alignment=al)
    assert err["rot_view_mean_deg"] < 1e-4 and err["rot_full_mean_deg"] < 1e-4


@pytest.mark.parametrize("bad_frac", [0.3, 0.6])
def test_alignment_robust_to_outliers_and_refines_noise(bad_frac):
    n = 400
    G = _rots(n, 6)
    Q = _rots(1, 7)[0]
    P = _small_noise(G, 3.0, 8) @ Q  # every pose off by exactly 3 degrees
    bad = np.random.default_rng(9).choice(n, int(n * bad_frac), replace=False)
    P[bad] = _rots(len(bad), 10)  # garbage poses
    al = M.align_rotations(P, G)
    assert not al.flipped
    good = np.setdiff1d(np.arange(n), bad)
    assert al.n_inliers >= 0.95 * len(good)
    full = M.rotation_angle_error_deg(al.apply(P)[good], G[good])
    assert np.median(full) == pytest.approx(3.0, abs=0.3)
    # every anchor proposal A = P_i^T G_i is exactly 3 degrees off (or garbage): only the refinement gets this close
    glob = M.rotation_angle_error_deg(al.A[None], Q.T[None])[0]
    assert glob < 0.6


def test_errors_known_values():
    G = _rots(50, 11)
    th = np.radians(20.0)
    Rz = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    P = Rz @ G  # pure in-plane rotation by 20 degrees: same viewing direction
    assert np.allclose(M.view_direction_error_deg(P, G), 0, atol=1e-5)
    assert np.allclose(M.inplane_error_deg(P, G), 20.0, atol=1e-6)
    assert np.allclose(M.rotation_angle_error_deg(P, G), 20.0, atol=1e-6)
    Rx = Rotation.from_euler("x", 30, degrees=True).as_matrix()
    P2 = Rx @ G  # tilts the viewing direction by 30 degrees, x axis unchanged
    assert np.allclose(M.view_direction_error_deg(P2, G), 30.0, atol=1e-6)
    assert np.allclose(M.inplane_error_deg(P2, G), 0.0, atol=1e-6)


def test_inplane_matches_euler_definition_when_views_agree():
    G = _rots(30, 12)
    th = np.radians(np.random.default_rng(0).uniform(-170, 170, 30))
    Rz = np.stack([np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) for t in th])
    P = Rz @ G
    a_g = Rotation.from_matrix(np.transpose(G, (0, 2, 1))).as_euler("zxz")[:, 0]
    a_p = Rotation.from_matrix(np.transpose(P, (0, 2, 1))).as_euler("zxz")[:, 0]
    d = np.abs(np.degrees(a_p - a_g))
    d = np.minimum(d, 360 - d)
    assert np.allclose(M.inplane_error_deg(P, G), d, atol=1e-6)


def test_translation_errors_and_global_offset():
    rng = np.random.default_rng(0)
    G = _rots(200, 13)
    gt = rng.normal(size=(200, 2))
    pred = gt + np.array([[3.0, -4.0]])
    e = M.translation_errors(pred, gt)
    assert e["trans_median_px"] == pytest.approx(5.0)
    assert e["trans_mse_px2"] == pytest.approx(25.0)
    u = np.array([1.5, -2.0, 0.5])
    pred2 = gt + np.einsum("nij,j->ni", G[:, :2, :], u)
    e2 = M.translation_errors(pred2, gt, gt_rot=G, correct_global=True)
    assert np.allclose(e2["global_offset_px"], u)
    assert e2["trans_mse_px2"] < 1e-20
    with pytest.raises(ValueError):
        M.translation_errors(pred[:, :1], gt)


def test_confusion_two_and_three_classes():
    rng = np.random.default_rng(1)
    lab = np.r_[np.zeros(900, int), np.ones(100, int)]
    score = np.where(lab == 0, 1.0, -1.0) + 0.05 * rng.normal(size=1000)
    flip = rng.choice(1000, 20, replace=False)
    score[flip] *= -1  # 20 images on the wrong side
    res = M.confusion_by_thresholds(score, lab)
    assert res["confusion"] == pytest.approx(0.02)
    assert res["order"] == [1, 0]  # low scores are class 1
    assert -0.8 < res["thresholds"][0] < 0.8
    assert (res["pred_labels"] != lab).sum() == 20
    # three classes in a non-monotone order along the score, labels not 0..K-1
    lab3 = np.repeat(np.array([7, 3, 5]), 100)
    s3 = np.repeat(np.array([0.0, 2.0, 1.0]), 100) + 0.1 * rng.normal(size=300)
    r3 = M.confusion_by_thresholds(s3, lab3)
    assert r3["confusion"] == 0.0 and r3["order"] == [7, 5, 3]
    # random scores: no better than the majority class allows
    rr = M.confusion_by_thresholds(rng.normal(size=1000), lab)
    assert 0.05 < rr["confusion"] <= 0.1
    # brute force check of optimality on a small case
    s = rng.normal(size=12)
    lab = rng.integers(0, 2, 12)
    best = min(min(((s > t) != lab).mean(), ((s > t) == lab).mean()) for t in np.r_[s, s.min() - 1])
    assert M.confusion_by_thresholds(s, lab)["confusion"] == pytest.approx(best)


def test_label_confusion_matches_labels_whatever_their_numbers():
    gt = np.array([0] * 60 + [1] * 40)
    pred = gt.copy()
    pred[:5] = 1            # 5 of state 0 called 1
    pred[60:62] = 0         # 2 of state 1 called 0
    r = M.label_confusion(pred, gt)
    assert r["confusion"] == pytest.approx(0.07) and r["mapping"] == {0: 0, 1: 1}
    swapped = M.label_confusion(1 - pred, gt)   # label numbers are arbitrary
    assert swapped["confusion"] == pytest.approx(0.07) and swapped["mapping"] == {0: 1, 1: 0}
    # a third predicted class has no true partner: its particles count as wrong
    three = pred.copy()
    three[90:] = 7
    assert M.label_confusion(three, gt)["confusion"] == pytest.approx(0.17)
    # all in one class: the minority is wrong (not the "best threshold" of a score)
    assert M.label_confusion(np.zeros(100, int), gt)["confusion"] == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.label_confusion(pred[:5], gt)


def test_spearman_sign_free():
    x = np.arange(100)
    assert M.spearman(-x ** 3, x) == pytest.approx(1.0)
    assert M.spearman(np.random.default_rng(0).normal(size=2000), np.arange(2000) % 10) < 0.1
    assert np.isnan(M.spearman(np.ones(10), np.arange(10)))


def _blob_volume(D, seed):
    return blob_volume(D, seed, sigma=(1.5, 3.5), amplitude=(0.5, 1.5))


def test_fsc_identity_and_noise():
    v = _blob_volume(32, 0)
    freq, c = M.fsc(v, v)
    assert len(freq) == 16 and freq[1] == pytest.approx(1 / 32)
    assert np.allclose(c[:14], 1.0)
    rng = np.random.default_rng(0)
    lo = M.fsc(v, v + 0.002 * rng.normal(size=v.shape))[1]
    hi = M.fsc(v, v + 0.05 * rng.normal(size=v.shape))[1]
    assert np.all(lo >= hi - 1e-9)
    assert hi[-1] < 0.5 < hi[2]
    rep = M.fsc_report(v, v + 0.05 * rng.normal(size=v.shape), apix=2.0)
    assert 2.0 < rep["res_0.5_px"] < 32 and rep["res_0.143_px"] <= rep["res_0.5_px"]
    assert rep["res_0.5_A"] == pytest.approx(2 * rep["res_0.5_px"])
    with pytest.raises(ValueError):
        M.fsc(v, v[:-1])


def test_fsc_resolution_first_crossing():
    freq = np.arange(8) / 16
    curve = np.array([1, 0.99, 0.9, 0.6, 0.4, 0.2, 0.6, 0.1])
    assert M.fsc_resolution_px(freq, curve, 0.5) == pytest.approx(16 / 3)
    assert M.fsc_resolution_px(freq, curve, 0.143) == pytest.approx(16 / 6)
    assert M.fsc_resolution_px(freq, np.ones(8), 0.5) == pytest.approx(16 / 7)
    # the DC-only shell 1 is ignored (decoded maps have their mean zeroed); shell 2 below -> inf
    assert M.fsc_resolution_px(freq, np.array([1, -1, 0.9, 0.8, 0.3, 0, 0, 0]), 0.5) == pytest.approx(16 / 3)
    assert M.fsc_resolution_px(freq, np.array([1, 1, 0.2, 0.8, 0.3, 0, 0, 0]), 0.5) == np.inf


@pytest.mark.parametrize("flipped", [False, True])
def test_volume_alignment_into_gt_frame(flipped):
    """Model = GT seen through an unknown rotation (and mirror); poses fitted on its slices bring it back."""
    D = 32
    gt = _blob_volume(D, 5)
    Q = _rots(1, 14)[0]
    A_true = Q.T @ (np.diag([-1.0, 1, 1]) if flipped else np.eye(3))  # model(x) = gt(x @ A_true^-T ...)
    # model volume: V_model(y) = V_gt(y @ inv(A_true)^T)  <=>  V_gt(x) = V_model(x @ A_true^T)
    model = M.rotate_volume(gt, np.linalg.inv(A_true))
    G = _rots(100, 15)
    H = M.FLIP if flipped else np.eye(3)
    P = H @ G @ np.linalg.inv(A_true)  # the poses under which the model reproduces the GT slices
    al = M.align_rotations(P, G)
    assert al.flipped == flipped
    assert np.allclose(al.A, A_true, atol=1e-8)
    back = M.align_volume_to_gt(model, al, gt=gt)
    r = M.fsc_report(back, gt)
    assert r["res_0.5_px"] < 2.5
    # the other hand is clearly worse
    wrong = M.RotationAlignment(al.A @ np.diag([1.0, 1, -1]), not al.flipped, 0.0)
    assert M.fsc_report(M.align_volume_to_gt(model, wrong, gt=gt), gt)["res_0.5_px"] > 4
