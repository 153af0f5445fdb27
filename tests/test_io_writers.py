"""Writers: MRC volumes/stacks (atomic, voxel size, origin), RELION 3.1 STAR, cryoDRGN pickles; Euler conventions."""
from __future__ import annotations

import pickle

import mrcfile
import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryofire_app.io import (
    InputError,
    MrcStackWriter,
    euler_relion_to_rot,
    parse_ctf_star,
    parse_pose_star,
    read_ctf_pkl,
    read_ind_pkl,
    read_mrc,
    read_pose_pkl,
    read_z_pkl,
    rot_to_euler_relion,
    rotvec_to_rot,
    write_ctf_pkl,
    write_ind_pkl,
    write_mrc,
    write_particles_star,
    write_pose_pkl,
    write_z_pkl,
)


def _ctf_rows(n: int, D: int = 32, apix: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(1)
    ctf = np.zeros((n, 9), np.float32)
    ctf[:, 0], ctf[:, 1] = D, apix
    ctf[:, 2] = rng.uniform(8000, 25000, n)
    ctf[:, 3] = ctf[:, 2] - rng.uniform(0, 500, n)
    ctf[:, 4] = rng.uniform(-180, 180, n)
    ctf[:, 5:8] = (300.0, 2.7, 0.1)
    ctf[n // 2:, 5:8] = (200.0, 2.0, 0.07)  # second optics group
    ctf[:, 8] = rng.uniform(0, 90, n)
    return ctf


def test_write_mrc_volume_header_and_atomic(tmp_path):
    vol = np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float64)
    out = tmp_path / "vol.mrc"
    write_mrc(out, vol, apix=2.5, origin=(10.0, -20.0, 30.0))
    assert mrcfile.validate(str(out), print_file=open("/dev/null", "w"))
    with mrcfile.open(out) as m:
        assert m.data.dtype == np.float32
        assert m.data.shape == (6, 8, 10)  # z, y, x
        assert (m.header.nx, m.header.ny, m.header.nz) == (10, 8, 6)
        assert np.allclose([m.voxel_size.x, m.voxel_size.y, m.voxel_size.z], 2.5)
        assert np.allclose(m.header.origin.item(), (10.0, -20.0, 30.0))
        assert m.is_volume()
    data, info = read_mrc(out)
    assert np.array_equal(data, vol.astype(np.float32))
    assert info.apix == 2.5 and info.origin == (10.0, -20.0, 30.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.mrc"]  # no temp file left


def test_stack_writer_streams_and_fixes_header(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(23, 16, 16)).astype(np.float32)
    out = tmp_path / "p.mrcs"
    with MrcStackWriter(out, D=16, apix=1.7) as w:
        for i in range(0, 23, 5):
            w.write(imgs[i:i + 5])
            assert not out.exists()  # only renamed into place at close
    assert mrcfile.validate(str(out), print_file=open("/dev/null", "w"))
    with mrcfile.open(out) as m:
        assert m.is_image_stack() and m.data.shape == (23, 16, 16)
        assert np.array_equal(m.data, imgs)
        assert np.isclose(m.voxel_size.x, 1.7)
        assert np.isclose(m.header.dmean, imgs.mean(), atol=1e-6)
        assert np.isclose(m.header.rms, imgs.std(), rtol=1e-5)
        assert np.isclose(m.header.dmin, imgs.min()) and np.isclose(m.header.dmax, imgs.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mrcs"]


def test_stack_writer_removes_temp_on_exception(tmp_path):
    out = tmp_path / "p.mrcs"
    with pytest.raises(RuntimeError):
        with MrcStackWriter(out, D=8, apix=1.0) as w:
            w.write(np.zeros((4, 8, 8)))
            raise RuntimeError("simulated failure")
    assert list(tmp_path.iterdir()) == []
    with MrcStackWriter(out, D=8, apix=1.0) as w:
        with pytest.raises(ValueError):
            w.write(np.zeros((2, 8, 9)))  # wrong shape is refused
        w.write(np.ones((8, 8)))
    with mrcfile.open(out) as m:
        assert int(m.header.nz) == 1 and np.array_equal(m.data, np.ones((8, 8), np.float32))


def test_euler_convention_matches_scipy_zyz_transpose():
    rng = np.random.default_rng(3)
    euler = np.stack([rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)], 1)
    rot = euler_relion_to_rot(euler)
    expect = np.transpose(Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix(), (0, 2, 1))
    assert np.allclose(rot, expect)
    assert np.allclose(euler_relion_to_rot(rot_to_euler_relion(rot)), rot, atol=1e-12)
    # a RELION tilt of 90 deg about y: the viewing direction (third row) becomes the volume x axis
    r = euler_relion_to_rot(np.array([[0.0, 90.0, 0.0]]))[0]
    assert np.allclose(r[2], [1, 0, 0], atol=1e-12)
    rv = rng.normal(size=(5, 3))
    assert np.allclose(rotvec_to_rot(rv), np.transpose(Rotation.from_rotvec(rv).as_matrix(), (0, 2, 1)))


def test_star_round_trip_two_optics_groups(tmp_path):
    n, D, apix = 12, 32, 1.5
    rng = np.random.default_rng(2)
    ctf = _ctf_rows(n, D, apix)
    rot = rotvec_to_rot(rng.normal(size=(n, 3)))
    trans = rng.uniform(-4, 4, size=(n, 2))
    out = tmp_path / "particles.star"
    write_particles_star(out, ("particles.mrcs", n), ctf, rot, trans, apix, D,
                         extra_columns={"rlnClassNumber": np.arange(n) % 3 + 1})
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    assert len(blocks["optics"]) == 2
    p = blocks["particles"]
    assert p["rlnImageName"].iloc[0] == "1@particles.mrcs" and p["rlnImageName"].iloc[-1] == f"{n}@particles.mrcs"
    assert np.allclose(p["rlnOriginXAngst"], trans[:, 0] * apix, atol=1e-5)
    assert list(p["rlnClassNumber"]) == list(np.arange(n) % 3 + 1)
    assert np.allclose(parse_ctf_star(out), ctf, rtol=1e-6, atol=1e-5)
    rot2, trans_frac = parse_pose_star(out)
    assert np.allclose(rot2, rot, atol=1e-6)
    assert np.allclose(trans_frac * D, trans, atol=1e-5)


def test_pickle_round_trips_match_cryodrgn_format(tmp_path):
    rng = np.random.default_rng(4)
    ctf = _ctf_rows(7)
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf.astype(np.float64))
    raw = pickle.load(open(tmp_path / "ctf.pkl", "rb"))  # our own file: plain pickle is fine here
    assert isinstance(raw, np.ndarray) and raw.dtype == np.float32 and raw.shape == (7, 9)
    assert np.array_equal(read_ctf_pkl(tmp_path / "ctf.pkl"), ctf)

    rot = rotvec_to_rot(rng.normal(size=(7, 3)))
    trans = rng.uniform(-0.1, 0.1, (7, 2))
    write_pose_pkl(tmp_path / "pose.pkl", rot, trans)
    raw = pickle.load(open(tmp_path / "pose.pkl", "rb"))
    assert isinstance(raw, tuple) and len(raw) == 2
    r, t = read_pose_pkl(tmp_path / "pose.pkl")
    assert np.array_equal(r, rot) and np.array_equal(t, trans)
    write_pose_pkl(tmp_path / "rot.pkl", rot, None)
    r, t = read_pose_pkl(tmp_path / "rot.pkl")
    assert np.array_equal(r, rot) and t is None

    z = rng.normal(size=(7, 8))
    write_z_pkl(tmp_path / "z.pkl", z)
    assert np.array_equal(read_z_pkl(tmp_path / "z.pkl"), z.astype(np.float32))
    write_ind_pkl(tmp_path / "ind.pkl", np.array([5, 1, 3], np.int32))
    ind = read_ind_pkl(tmp_path / "ind.pkl")
    assert ind.dtype == np.int64 and list(ind) == [5, 1, 3]
    with pytest.raises(InputError, match=r"z\.pkl.*expected an \(N, 9\) array"):
        read_ctf_pkl(tmp_path / "z.pkl")  # a latent pickle is not a CTF pickle


def test_io_euler_agrees_with_physics_rotations():
    """io keeps a numpy copy of the convention (no torch in io); it must agree with physics.rotations."""
    torch = pytest.importorskip("torch")
    from cryofire_app.physics.rotations import cryosparc_pose_to_matrix, euler_relion_to_matrix

    rng = np.random.default_rng(8)
    euler = np.stack([rng.uniform(-180, 180, 30), rng.uniform(0, 180, 30), rng.uniform(-180, 180, 30)], 1)
    t = torch.as_tensor(euler, dtype=torch.float64)
    assert np.allclose(euler_relion_to_matrix(t[:, 0], t[:, 1], t[:, 2]).numpy(), euler_relion_to_rot(euler))
    rv = rng.normal(size=(30, 3))
    assert np.allclose(cryosparc_pose_to_matrix(torch.as_tensor(rv)).numpy(), rotvec_to_rot(rv))
