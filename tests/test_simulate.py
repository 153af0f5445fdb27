"""Simulator: determinism, SNR, labels/fractions, metadata round trips, hinge states, metadata-driven runs, CLI."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import mrcfile
import numpy as np
import pytest
import torch

from cryofire_app.cli import main as cli_main
from cryofire_app.io import (
    InputError,
    load_particles,
    parse_ctf_star,
    parse_pose_star,
    read_ctf_pkl,
    read_pose_pkl,
    read_star,
    write_mrc,
)
from cryofire_app.physics import FourierProjector, fourier_resize, rotate_volume
from cryofire_app.simulate import (
    DEMO_MAP,
    DEMO_MAP_APIX,
    HingeConfig,
    SimulationConfig,
    demo_config,
    hinge_states,
    simulate,
)

D = 32


def _base(tmp_path, name, **kw) -> SimulationConfig:
    cfg = SimulationConfig(outdir=str(tmp_path / name), n=120, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=D,
                           snr=0.5, max_shift_px=2.0, seed=3, progress=False, chunk=50)
    return replace(cfg, **kw)


def _stack(res):
    return mrcfile.read(res.files["particles"])


def test_deterministic_across_chunk_sizes_and_seeds(tmp_path):
    a = simulate(_base(tmp_path, "a", chunk=17))
    b = simulate(_base(tmp_path, "b", chunk=120))
    c = simulate(_base(tmp_path, "c", seed=4))
    xa, xb, xc = _stack(a), _stack(b), _stack(c)
    assert xa.shape == (120, D, D)
    assert np.array_equal(xa, xb)
    assert not np.allclose(xa, xc)
    for name in ("labels", "ctf", "poses"):
        assert (a.outdir / a.files[name].name).read_bytes() == (b.outdir / b.files[name].name).read_bytes()


def test_snr_measured_on_output(tmp_path):
    clean = simulate(_base(tmp_path, "clean", snr=math.inf, n=200))
    noisy = simulate(_base(tmp_path, "noisy", snr=0.5, n=200))
    x0, x1 = _stack(clean).astype(np.float64), _stack(noisy).astype(np.float64)
    noise = x1 - x0
    snr = x0.var() / noise.var()
    assert abs(snr / 0.5 - 1) < 0.03, snr
    assert abs(noise.mean()) < 4 * noise.std() / math.sqrt(noise.size)  # zero-mean white noise
    # white: neighbouring pixels uncorrelated
    assert abs(np.mean(noise[:, :, 1:] * noise[:, :, :-1])) / noise.var() < 0.02
    settings = json.loads((noisy.outdir / "settings.json").read_text())
    assert settings["noise_std"] == pytest.approx(math.sqrt(settings["signal_var"] / 0.5))


def _two_maps(tmp_path):
    """Two clearly different maps on the same grid (the demo map and a mirrored copy)."""
    with mrcfile.open(DEMO_MAP) as m:
        v = np.asarray(m.data, dtype=np.float32)
    paths = [tmp_path / "s0.mrc", tmp_path / "s1.mrc"]
    write_mrc(paths[0], v, apix=DEMO_MAP_APIX)
    write_mrc(paths[1], v[:, :, ::-1].copy(), apix=DEMO_MAP_APIX)
    return paths


def test_labels_follow_fractions_and_states(tmp_path):
    maps = _two_maps(tmp_path)
    cfg = _base(tmp_path, "mix", maps=[str(p) for p in maps], apix=None, n=1500, fractions=[0.2, 0.8],
                snr=math.inf, max_shift_px=0.0, chunk=500)
    res = simulate(cfg)
    labels = np.load(res.files["labels"])
    assert labels.shape == (1500,) and set(np.unique(labels)) == {0, 1}
    p1 = labels.mean()
    assert abs(p1 - 0.8) < 4 * math.sqrt(0.16 / 1500)
    star = read_star(res.files["star"])
    assert np.array_equal(star.column("rlnClassNumber").astype(int), labels + 1)
    # each image is the CTF-modulated projection of its own state's map, not of the other one
    imgs = _stack(res)[:40].astype(np.float64)
    rot, _ = read_pose_pkl(res.files["poses"])
    ctf = read_ctf_pkl(res.files["ctf"])
    from cryofire_app.physics import compute_ctf, lattice_to_image
    gts = [torch.tensor(mrcfile.read(res.files[f"gt_state_{k}"]).astype(np.float64)) for k in range(2)]
    for k, vol in enumerate(gts):
        proj = FourierProjector(vol)
        c = -torch.tensor(ctf[:40], dtype=torch.float64)
        y = proj.slice(torch.tensor(rot[:40], dtype=torch.float64))
        cc = compute_ctf(proj.lattice.freqs2d, -c[:, 1], -c[:, 2], -c[:, 3], -c[:, 4], -c[:, 5], -c[:, 6], -c[:, 7],
                         -c[:, 8])
        pred = lattice_to_image(-cc * y, D).numpy()
        err = np.linalg.norm(pred - imgs, axis=(1, 2)) / np.linalg.norm(imgs, axis=(1, 2))
        own = labels[:40] == k
        assert err[own].max() < 1e-3 and err[~own].min() > 0.1


def test_star_reread_matches_pickles_and_header(tmp_path):
    res = simulate(_base(tmp_path, "meta", n=60))
    rot, trans = read_pose_pkl(res.files["poses"])
    ctf = read_ctf_pkl(res.files["ctf"])
    rot_s, trans_s = parse_pose_star(res.files["star"])
    ctf_s = parse_ctf_star(res.files["star"])
    assert np.allclose(rot_s, rot, atol=1e-5)
    assert np.allclose(trans_s, trans, atol=1e-6)
    assert np.abs(trans * D).max() <= 2.0 and np.abs(trans).max() > 0
    assert np.allclose(ctf_s, ctf, rtol=1e-6, atol=1e-3)
    assert np.allclose(ctf[:, 0], D) and np.allclose(ctf[:, 1], DEMO_MAP_APIX * 65 / D)
    assert 1e4 <= ctf[:, 2:4].mean() <= 2.5e4
    with mrcfile.open(res.files["particles"]) as m:
        assert m.voxel_size.x == pytest.approx(DEMO_MAP_APIX * 65 / D, rel=1e-5)
    assert np.allclose(np.linalg.det(rot), 1, atol=1e-5)
    # the STAR is a complete dataset for the particle loader: same images, poses and shifts
    ps = load_particles(res.files["star"])
    assert len(ps.images) == 60 and np.array_equal(ps.images[np.arange(60)], _stack(res))
    assert np.allclose(ps.rots, rot, atol=1e-5) and np.allclose(ps.trans_px, trans * D, atol=1e-4)


def test_hinge_states_differ_only_in_masked_region():
    with mrcfile.open(DEMO_MAP) as m:
        vol = fourier_resize(torch.tensor(np.asarray(m.data, dtype=np.float64)), D)
    h = hinge_states(vol, HingeConfig(steps=2, angle_deg=25.0))
    v0, v1 = h.volume(0.0), h.volume(1.0)
    assert torch.allclose(v0, vol, atol=1e-9 * float(vol.abs().max()))  # state 0 is the input map
    mask = h.moving.abs() > 0  # support of the moving part
    moved = rotate_volume(mask.double(), h.motion(torch.tensor([1.0]))[0], center=h.pivot + D // 2) > 0
    region = (mask | moved).double()
    # dilate by 1 voxel (trilinear interpolation reaches one voxel further)
    region = torch.nn.functional.max_pool3d(region[None, None], 3, stride=1, padding=1)[0, 0] > 0
    diff = (v1 - v0).abs()
    assert float(diff[~region].max()) == 0.0
    assert float(region.double().mean()) < 0.6  # the region is a part of the box, not all of it
    assert float(diff[region].max()) > 0.2 * float(vol.abs().max())
    moving_fraction = float(torch.clamp(h.moving, min=0).sum() / torch.clamp(vol, min=0).sum())
    assert 0.25 < moving_fraction < 0.35


def test_hinge_images_match_gt_maps_continuous_labels(tmp_path):
    res = simulate(_base(tmp_path, "hinge", n=80, snr=math.inf, max_shift_px=0.0, astigmatism_A=0.0,
                         amp_contrast=1.0, cs_mm=0.0, defocus_um=(0.0, 0.0),
                         hinge=HingeConfig(steps=2, angle_deg=25.0)))
    labels = np.load(res.files["labels"])
    u = np.load(res.files["labels_continuous"])
    assert np.allclose(u, labels)  # 2 steps: coordinate 0 and 1
    imgs = _stack(res).astype(np.float64)  # CTF == +1 (w = 1, no defocus, no Cs): plain projections
    rot, _ = read_pose_pkl(res.files["poses"])
    for k in range(2):
        vol = torch.tensor(mrcfile.read(res.files[f"gt_state_{k}"]).astype(np.float64))
        pred = FourierProjector(vol).project(torch.tensor(rot, dtype=torch.float64)).numpy()
        err = np.linalg.norm(pred - imgs, axis=(1, 2)) / np.linalg.norm(imgs, axis=(1, 2))
        own = labels == k
        assert err[own].max() < 1e-3  # discrete states are projected from their GT maps
        assert err[~own].min() > 0.15

    # continuous: the per-particle rigid motion (done on the slices) agrees with a map moved in real space
    clean = dict(snr=math.inf, max_shift_px=0.0, astigmatism_A=0.0, amp_contrast=1.0, cs_mm=0.0,
                 defocus_um=(0.0, 0.0))
    cres = simulate(_base(tmp_path, "cont_clean", n=6, hinge=HingeConfig(continuous=True, angle_deg=25.0), **clean))
    uc = np.load(cres.files["labels_continuous"])
    rot, _ = read_pose_pkl(cres.files["poses"])
    imgs = _stack(cres).astype(np.float64)
    with mrcfile.open(DEMO_MAP) as m:
        vol = fourier_resize(torch.tensor(np.asarray(m.data, dtype=np.float64)), D)
    h = hinge_states(vol, HingeConfig(continuous=True, angle_deg=25.0))
    for i in range(6):
        pred = FourierProjector(h.volume(float(uc[i]))).project(torch.tensor(rot[i:i + 1], dtype=torch.float64))
        err = np.linalg.norm(pred[0].numpy() - imgs[i]) / np.linalg.norm(imgs[i])
        assert err < 0.04, (i, uc[i], err)

    cont = simulate(_base(tmp_path, "cont", n=300, hinge=HingeConfig(continuous=True, steps=4)))
    lab = np.load(cont.files["labels"])
    uc = np.load(cont.files["labels_continuous"])
    assert uc.min() >= 0 and uc.max() <= 1 and np.array_equal(lab, np.minimum((uc * 4).astype(int), 3))
    assert len([k for k in cont.files if k.startswith("gt_state_")]) == 4
    assert json.loads((cont.outdir / "settings.json").read_text())["hinge_states_u"] == [0.125, 0.375, 0.625, 0.875]


def test_from_metadata_star_and_cs(tmp_path, fixtures_dir):
    star = fixtures_dir / "cryodrgn/relion31.star"
    res = simulate(_base(tmp_path, "fromstar", n=None, from_metadata=str(star), box=D))
    rot_ref, trans_ref = parse_pose_star(star)
    ctf_ref = parse_ctf_star(star)
    rot, trans = read_pose_pkl(res.files["poses"])
    ctf = read_ctf_pkl(res.files["ctf"])
    assert res.n == len(rot_ref) == 5
    assert np.allclose(rot, rot_ref, atol=1e-5)
    assert np.allclose(trans, trans_ref, atol=1e-6)  # same physical shift: t/D is box-independent
    assert np.allclose(ctf[:, 2:], ctf_ref[:, 2:], rtol=1e-6)
    assert np.allclose(ctf[:, 1], ctf_ref[0, 1] * ctf_ref[0, 0] / D)
    cs = fixtures_dir / "cryodrgn/cryosparc_P12_J24_001_particles.cs"
    res2 = simulate(_base(tmp_path, "fromcs", n=7, from_metadata=str(cs), box=D))
    assert _stack(res2).shape == (7, D, D)
    with pytest.raises(InputError, match="more than"):
        simulate(_base(tmp_path, "toomany", n=10, from_metadata=str(star), box=D))


def test_bad_input_and_cli(tmp_path):
    out = tmp_path / "cli"
    assert cli_main(["simulate", str(DEMO_MAP), "-o", str(out), "-n", "10", "-D", "16"]) == 2  # voxel size 0
    rc = cli_main(["simulate", str(DEMO_MAP), "--apix", "5", "-o", str(out), "-n", "12", "-D", "16", "--snr", "0.2",
                   "--hinge", "3", "--fractions", "1,1,2", "--defocus", "0.8,1.2", "--defocus-dist", "lognormal",
                   "--max-shift", "1", "--seed", "5", "--no-progress"])
    assert rc == 0
    for name in ("particles.mrcs", "particles.star", "ctf.pkl", "poses.pkl", "labels.npy", "settings.json",
                 "gt_state_0.mrc", "gt_state_2.mrc"):
        assert (out / name).exists(), name
    ctf = read_ctf_pkl(out / "ctf.pkl")
    assert ctf[:, 2:4].min() >= 0.8e4 - 100 and ctf[:, 2:4].max() <= 1.2e4 + 100
    # refuses to overwrite, bad fractions, bad box
    assert cli_main(["simulate", str(DEMO_MAP), "--apix", "5", "-o", str(out), "-n", "12", "-D", "16"]) == 2
    assert cli_main(["simulate", str(DEMO_MAP), "--apix", "5", "-o", str(tmp_path / "x"), "-n", "5",
                     "--fractions", "1,2"]) == 2
    assert cli_main(["simulate", str(DEMO_MAP), "--apix", "5", "-o", str(tmp_path / "y"), "-n", "5", "-D", "15"]) == 2


def test_demo_config_two_states(tmp_path):
    res = simulate(replace(demo_config(tmp_path / "demo", n=40, box=D), chunk=16))
    assert res.n_states == 2 and res.D == D
    assert set(np.unique(np.load(res.files["labels"]))) <= {0, 1}
    g0 = mrcfile.read(res.files["gt_state_0"])
    g1 = mrcfile.read(res.files["gt_state_1"])
    assert np.linalg.norm(g1 - g0) > 0.2 * np.linalg.norm(g0)
