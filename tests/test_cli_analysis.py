"""`cryofire analyze`, `volume` and `eval` on a real (tiny, briefly trained) run folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryofire_app.cli import main as cli


def _train_has_option(opt: str) -> bool:
    import argparse

    from cryofire_app.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return opt in sub.choices["train"]._option_string_actions


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """400 noisy projections (box 32) of the bundled map and of a modified copy; a 640-image training run."""
    from importlib.resources import files

    from cryofire_app.io import MrcStackWriter, read_map, write_pose_pkl
    from cryofire_app.physics import fourier_resize, project_fourier, random_rotations

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    vol, _ = read_map(files("cryofire_app") / "resources" / "ribosome70S_65.mrc")
    v0 = fourier_resize(torch.as_tensor(np.asarray(vol, np.float64)), 32)
    v1 = v0.clone()
    v1[8:14, 8:14, 14:20] += v0.max() * 0.8
    n = 400
    g = torch.Generator().manual_seed(0)
    rot = random_rotations(n, generator=g, dtype=torch.float64)
    lab = (torch.rand(n, generator=g) < 0.3).long()
    img = torch.where(lab[:, None, None] == 1, project_fourier(v1, rot), project_fourier(v0, rot))
    img = img + 0.1 * img.std() * torch.randn(img.shape, generator=g, dtype=img.dtype)
    with MrcStackWriter(d / "p.mrcs", 32, 4.0) as w:
        w.write(img.float().numpy())
    write_pose_pkl(d / "gt_pose.pkl", rot.float().numpy(), np.zeros((n, 2), np.float32))
    np.save(d / "labels.npy", lab.numpy())
    # these tests check bookkeeping, not convergence: the plain amortized schedule is the cheapest real run
    extra = ["--schedule", "amortized"] if _train_has_option("--schedule") else []
    rc = cli(["train", str(d / "p.mrcs"), "-o", str(d / "run"), "--num-images", "640", "--pose-only-images", "320",
              "--zdim", "2", "--quiet", "--checkpoint-every", "320", "--enc-channels", "8,16", "--dec-hidden", "32",
              "--dec-layers", "1", "--pe-dim", "8", "--threads", "1", *extra])
    assert rc == 0
    return d


def test_analyze_writes_volumes_plots_and_star(tiny_run, capsys):
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_mrc
    from cryofire_app.io.particles import load_particles

    out = tiny_run / "an"
    assert cli(["analyze", str(tiny_run / "run"), "-k", "2", "--n", "2", "-o", str(out)]) == 0
    assert "analyzed 400 particles" in capsys.readouterr().out
    run = Run(tiny_run / "run")
    summ = json.loads((out / "summary.json").read_text())
    assert sum(summ["kmeans"]["sizes"]) == 400 and summ["apix"] == pytest.approx(4.0)
    labels = np.load(out / "kmeans2" / "labels.npy")
    assert labels.shape == (400,) and set(labels) == {0, 1}
    centers = np.loadtxt(out / "kmeans2" / "centers.txt", ndmin=2)
    assert centers.shape == (2, 2)
    assert np.allclose(centers[0], run.z[labels == 0].mean(0), atol=1e-4)
    vol, info = read_mrc(out / "kmeans2" / "vol_000.mrc")
    assert vol.shape == (32, 32, 32) and info.apix == pytest.approx(4.0)
    assert np.allclose(vol, run.decode(centers[:1].astype(np.float32))[0], atol=1e-5)
    assert len(list((out / "pc1").glob("vol_*.mrc"))) == 2 and len(list((out / "pc2").glob("vol_*.mrc"))) == 2
    for png in ("loss.png", "pc_scatter.png", "views.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the STAR carries the original images with the predicted poses and the cluster labels
    back = load_particles(out / "particles.star")
    orig = load_particles(tiny_run / "p.mrcs")
    assert np.array_equal(back.images[:5], orig.images[run.index[:5]])
    assert np.allclose(back.rots, run.rot, atol=1e-4)
    assert np.allclose(back.trans_px, run.trans, atol=1e-3)


def test_volume_command(tiny_run, capsys):
    from cryofire_app.analysis.latent import fit_pca
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_mrc
    from cryofire_app.physics import fourier_resize

    run_dir = str(tiny_run / "run")
    run = Run(run_dir)
    assert cli(["volume", run_dir, "--z", "0.5,-1", "-o", str(tiny_run / "v.mrc")]) == 0
    v, _ = read_mrc(tiny_run / "v.mrc")
    assert np.allclose(v, run.decode(np.array([[0.5, -1.0]], np.float32))[0], atol=1e-5)
    assert cli(["volume", run_dir, "--pc", "1", "--range", "-2,2", "--n", "3", "-o", str(tiny_run / "pc")]) == 0
    zs = np.loadtxt(tiny_run / "pc" / "z_values.txt", ndmin=2)
    lp = fit_pca(run.z)
    assert np.allclose(lp.pca.transform(zs)[:, 0], np.array([-2, 0, 2]) * lp.std[0], atol=1e-3)
    assert np.allclose(read_mrc(tiny_run / "pc" / "vol_002.mrc")[0], run.decode(zs[2:3].astype(np.float32))[0],
                       atol=1e-5)
    capsys.readouterr()
    assert cli(["volume", run_dir, "--z", "1,2,3", "-o", str(tiny_run / "bad.mrc")]) == 2
    assert "multiple of zdim = 2" in capsys.readouterr().err
    assert cli(["volume", run_dir, "--pc", "3", "-o", str(tiny_run / "bad")]) == 2
    capsys.readouterr()
    # --box: the same map resampled over the same field of view (half the voxel size at twice the box)
    assert cli(["volume", run_dir, "--z", "0.5,-1", "--box", "64", "-o", str(tiny_run / "big.mrc")]) == 0
    big, hdr = read_mrc(tiny_run / "big.mrc")
    assert big.shape == (64, 64, 64) and abs(hdr.apix - run.apix / 2) < 1e-3
    back = fourier_resize(torch.from_numpy(np.array(big)), 32, ndim=3).numpy()
    assert np.allclose(back, v, atol=1e-4 * np.abs(v).max())
    assert cli(["volume", run_dir, "--z", "0,0", "--box", "33", "-o", str(tiny_run / "odd.mrc")]) == 2
    assert "--box" in capsys.readouterr().err and not (tiny_run / "odd.mrc").exists()


def test_eval_against_own_predictions_and_infer_folder(tiny_run, capsys):
    """Ground truth = the run's own pose.pkl: every error must vanish (index, box and hand bookkeeping)."""
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import write_mrc

    run_dir = tiny_run / "run"
    run = Run(run_dir)
    gt_map = run.decode(run.z.mean(0, keepdims=True))[0]
    write_mrc(tiny_run / "gt.mrc", gt_map, apix=4.0)
    out = tiny_run / "ev.json"
    assert cli(["eval", str(run_dir), "--gt-poses", str(run_dir / "pose.pkl"), "--gt-labels",
                str(tiny_run / "labels.npy"), "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 400 and res["alignment"]["hand"] == "correct"
    assert res["rot_view_median_deg"] < 0.05 and res["rot_full_mean_deg"] < 0.05
    assert res["trans_mse_px2"] < 1e-6
    minority = np.load(tiny_run / "labels.npy").mean()
    assert 0 <= res["confusion"] <= min(minority, 1 - minority) + 1e-9  # never worse than all-majority
    assert res["train_images_seen"] >= 640
    # one map, no labels: the volume at the (single) k-means centroid = mean z is exactly the map -> FSC 1 out to
    # the frequency radius the decoder was trained to (beyond it the decoded map is empty)
    assert cli(["eval", str(run_dir), "--gt-poses", str(run_dir / "pose.pkl"), "--gt-maps", str(tiny_run / "gt.mrc"),
                "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    r = run.mask_radius
    assert 2 <= r < 16
    assert min(res["fsc"]["maps"][0]["fsc"][2:r + 1]) > 0.999
    assert res["res_major_0.5_px"] <= 32 / r + 1e-9
    assert res["res_major_0.5_A"] == pytest.approx(4 * res["res_major_0.5_px"])
    assert cli(["eval", str(run_dir), "--gt-poses", str(run_dir / "pose.pkl"), "--gt-maps", str(tiny_run / "gt.mrc"),
                "--gt-labels", str(tiny_run / "labels.npy"), "-o", str(out)]) == 2  # 1 map for 2 states
    # held-out split only
    assert cli(["eval", str(run_dir), "--gt-poses", str(run_dir / "pose.pkl"), "--split", "val",
                "-o", str(tiny_run / "ev_val.json")]) == 0
    assert json.loads((tiny_run / "ev_val.json").read_text())["n_images"] == int(run.val.sum())
    # an infer folder on a subset stack, mapped to the ground-truth rows with --ind
    from cryofire_app.io import MrcStackWriter, write_ind_pkl
    from cryofire_app.io.particles import load_particles

    sel = np.arange(1, 400, 7)
    ps = load_particles(tiny_run / "p.mrcs")
    with MrcStackWriter(tiny_run / "sub.mrcs", 32, 4.0) as w:
        w.write(ps.images[sel])
    write_ind_pkl(tiny_run / "sub.ind.pkl", sel)
    assert cli(["infer", str(run_dir), str(tiny_run / "sub.mrcs"), "-o", str(tiny_run / "pred"), "--select",
                "encoder"]) == 0
    assert cli(["eval", str(tiny_run / "pred"), "--gt-poses", str(tiny_run / "gt_pose.pkl"), "--ind",
                str(tiny_run / "sub.ind.pkl"), "--model", str(run_dir), "-o", str(tiny_run / "ev_pred.json")]) == 0
    r2 = json.loads((tiny_run / "ev_pred.json").read_text())
    assert r2["n_images"] == len(sel) and r2["rot_view_median_deg"] >= 0
    capsys.readouterr()
    assert cli(["eval", str(tiny_run / "nowhere"), "--gt-poses", str(run_dir / "pose.pkl"), "-o",
                str(tiny_run / "x.json")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_analyze_flip_hand_mirrors_maps_and_poses(tiny_run):
    """--flip-hand: every map is the mirror image of the unflipped one and the STAR poses are F R F (analysis.hand)."""
    from cryofire_app.analysis.hand import mirror_rotations, mirror_volume
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_mrc
    from cryofire_app.io.particles import load_particles

    out = tiny_run / "an_flip"
    assert cli(["analyze", str(tiny_run / "run"), "-k", "2", "--n", "2", "--pcs", "1", "-o", str(out),
                "--flip-hand"]) == 0
    run = Run(tiny_run / "run")
    centers = np.loadtxt(out / "kmeans2" / "centers.txt", ndmin=2).astype(np.float32)
    plain = run.decode(centers[:1])[0]
    flipped, _ = read_mrc(out / "kmeans2" / "vol_000.mrc")
    scale = float(np.abs(plain).max())
    assert np.abs(flipped - mirror_volume(plain)).max() < 1e-4 * scale
    assert np.abs(flipped - plain).max() > 0.05 * scale   # a real mirror, not the same map
    back = load_particles(out / "particles.star")
    assert np.allclose(back.rots, mirror_rotations(run.rot), atol=1e-4)
    assert not np.allclose(back.rots, run.rot, atol=1e-2)
