"""Hand (chirality) of a reconstruction: the mirror of maps and poses is consistent with the projector and with
analysis.metrics' FLIP convention; the reference-map check tells a rotated copy from a mirrored one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_app.analysis import hand, metrics
from cryofire_app.physics.fft import fourier_resize
from cryofire_app.physics.projector import project_fourier, rotate_volume
from cryofire_app.physics.rotations import random_rotations


@pytest.fixture(scope="module")
def ribosome32() -> np.ndarray:
    """The bundled 70S map at box 32 (chiral, like every protein), zero outside a sphere of radius 14 px: for an
    even box the plane z = -D/2 has no mirror partner inside the box (a particle never reaches it)."""
    from cryofire_app.io import read_map
    from cryofire_app.simulate import DEMO_MAP

    vol, _ = read_map(DEMO_MAP)
    v = fourier_resize(torch.as_tensor(np.array(vol), dtype=torch.float64), 32).numpy()
    c = np.arange(32) - 16
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return v * (r <= 14)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_mirror_is_an_involution_and_keeps_rotations_proper():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(2, 8, 8, 8))
    m = hand.mirror_volume(v)
    assert m.shape == v.shape and not np.allclose(m, v)
    np.testing.assert_array_equal(hand.mirror_volume(m), v)
    # about the centre voxel D // 2: plane 4 stays, plane 4 + k swaps with 4 - k, plane 0 (no partner) stays
    np.testing.assert_array_equal(m[:, 4], v[:, 4])
    np.testing.assert_array_equal(m[:, 5], v[:, 3])
    np.testing.assert_array_equal(m[:, 0], v[:, 0])
    R = random_rotations(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    M = hand.mirror_rotations(R)
    np.testing.assert_allclose(M, metrics.FLIP @ R @ metrics.FLIP, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(M), 1.0, atol=1e-9)
    np.testing.assert_array_equal(hand.mirror_rotations(M), R)
    with pytest.raises(ValueError):
        hand.mirror_volume(np.zeros((4, 4, 5)))


def test_mirrored_map_with_mirrored_poses_gives_the_same_images(ribosome32):
    vol = torch.as_tensor(ribosome32)
    rot = random_rotations(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    img = project_fourier(vol, rot)
    vol_m = torch.as_tensor(hand.mirror_volume(ribosome32))
    rot_m = torch.as_tensor(hand.mirror_rotations(rot.numpy()))
    assert _rel(project_fourier(vol_m, rot_m), img) < 1e-6
    # the mirrored map alone (poses kept) does not explain the images: the test can fail
    assert _rel(project_fourier(vol_m, rot), img) > 0.2


def test_mirroring_a_flipped_run_makes_metrics_see_the_correct_hand(ribosome32):
    """A 'run' = the ground truth rotated by Q and mirrored (poses to match): metrics call it flipped; after
    mirror_volume/mirror_rotations it is 'correct' and the map aligns back onto the ground truth."""
    g = torch.Generator().manual_seed(2)
    G = random_rotations(300, generator=g, dtype=torch.float64).numpy()
    Q = random_rotations(1, generator=g, dtype=torch.float64).numpy()[0]
    v_rot = rotate_volume(torch.as_tensor(ribosome32), torch.as_tensor(Q)).numpy()  # v_rot(r) = V(r Q^T)
    P_rot = G @ Q  # the poses that explain the ground-truth images with v_rot
    run_vol, run_rot = hand.mirror_volume(v_rot), hand.mirror_rotations(P_rot)  # what an ab initio run may return
    al = metrics.align_rotations(run_rot, G)
    assert al.flipped and hand.hand_from_alignment(al) == "flipped"
    assert hand.hand_from_alignment(al.to_dict()) == "flipped"
    fixed_rot, fixed_vol = hand.mirror_rotations(run_rot), hand.mirror_volume(run_vol)
    al2 = metrics.align_rotations(fixed_rot, G)
    assert not al2.flipped and hand.hand_from_alignment({"alignment": al2.to_dict()}) == "correct"
    np.testing.assert_allclose(al2.A, metrics.FLIP @ al.A, atol=1e-6)
    errs = metrics.rotation_errors(fixed_rot, G, alignment=al2)
    assert errs["rot_full_median_deg"] < 1e-3
    # the map in the ground-truth frame: the same from (run, flipped alignment) and (mirrored run, correct alignment)
    back_flipped = metrics.align_volume_to_gt(run_vol, al, refine_shift=False)
    back_fixed = metrics.align_volume_to_gt(fixed_vol, al2, refine_shift=False)
    assert _rel(back_fixed, back_flipped) < 0.05
    r = np.corrcoef(back_fixed.ravel(), ribosome32.ravel())[0, 1]
    assert r > 0.9
    # the unmirrored run map with the correct-hand alignment does not come back (chirality matters)
    wrong = metrics.align_volume_to_gt(run_vol, al2, refine_shift=False)
    assert np.corrcoef(wrong.ravel(), ribosome32.ravel())[0, 1] < r - 0.2


def test_mirror_pose_pkl_round_trip(tmp_path):
    from cryofire_app.io import read_pose_pkl, write_pose_pkl

    R = random_rotations(5, generator=torch.Generator().manual_seed(3)).numpy()
    t = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32) * 0.01
    write_pose_pkl(tmp_path / "pose.pkl", R, t)
    hand.mirror_pose_pkl(tmp_path / "pose.pkl", tmp_path / "pose_m.pkl")
    Rm, tm = read_pose_pkl(tmp_path / "pose_m.pkl")
    np.testing.assert_allclose(Rm, hand.mirror_rotations(R), atol=1e-7)
    np.testing.assert_array_equal(tm, t)


def test_pose_arrays_in_either_hand(tmp_path):
    """The array-level helpers the file-level mirror_pose_pkl (and the demo) use: F R F, translations kept."""
    from cryofire_app.io import read_pose_pkl

    R = random_rotations(4, generator=torch.Generator().manual_seed(5)).numpy().astype(np.float64)
    t = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32) * 0.01
    Rm, tm = hand.mirror_poses(R, t)
    np.testing.assert_array_equal(Rm, hand.mirror_rotations(R))
    np.testing.assert_array_equal(tm, t)
    assert tm is not t and hand.mirror_poses(R)[1] is None
    hand.write_pose_pkl_in_hand(tmp_path / "kept.pkl", R, t, mirror=False)
    hand.write_pose_pkl_in_hand(tmp_path / "mirrored.pkl", R, t, mirror=True)
    rk, tk = read_pose_pkl(tmp_path / "kept.pkl")
    rm, tm2 = read_pose_pkl(tmp_path / "mirrored.pkl")
    np.testing.assert_allclose(rk, R, atol=1e-7)
    np.testing.assert_allclose(rm, hand.mirror_rotations(R), atol=1e-7)
    assert not np.allclose(rm, rk, atol=1e-3)
    np.testing.assert_array_equal(tk, t)
    np.testing.assert_array_equal(tm2, t)


@pytest.mark.parametrize("mirrored", [False, True])
def test_reference_hand_check_on_the_bundled_map(ribosome32, mirrored):
    """Rotated (and shifted, noisy) copy of the bundled map -> 'correct'; its mirror -> 'flipped'."""
    g = torch.Generator().manual_seed(4)
    R = random_rotations(1, generator=g, dtype=torch.float64)[0]
    copy = torch.roll(rotate_volume(torch.as_tensor(ribosome32), R), (1, -1, 2), (0, 1, 2)).numpy()
    copy = copy + np.random.default_rng(5).normal(0.0, 0.5 * copy.std(), copy.shape)
    if mirrored:
        copy = hand.mirror_volume(copy)
    res = hand.hand_against_reference(copy, ribosome32, box=16)
    assert res.hand == ("flipped" if mirrored else "correct")
    win, lose = (res.cc_flipped, res.cc_correct) if mirrored else (res.cc_correct, res.cc_flipped)
    assert win > 0.6 and win - lose > 0.1
    assert set(res.to_dict()) >= {"hand", "cc_correct", "cc_flipped", "rot", "shift_px"}
