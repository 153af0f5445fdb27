"""The data's units and a constant offset must not matter (issue 23).

`reconstruct.data.prepare_particles` removes each image's background level (median of the annulus outside the
window's inner radius) before windowing and divides by a robust per-stack statistic, in float64 with a pre-scaled
float32 transform; the trainer's `Preprocessor.fit_norm` takes the median of per-image RMS values. So a stack scaled
by 1e6 and offset by 1e3 gives the seed the same input, hence the same poses, as the original; values near the top of
float32's range neither overflow nor turn into NaN.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_app.io import load_particles
from cryofire_app.reconstruct import SeedConfig, seed_abinit
from cryofire_app.reconstruct.data import prepare_particles
from cryofire_app.simulate import DEMO_MAP, DEMO_MAP_APIX, SimulationConfig, simulate

pytestmark = pytest.mark.usefixtures("one_thread")

N, BOX = 160, 32


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("norm") / "sim"
    simulate(SimulationConfig(outdir=str(out), n=N, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=BOX, snr=0.5,
                              max_shift_px=1.0, seed=5, progress=False))
    ps = load_particles(str(out / "particles.star"))
    return ps.images[np.arange(N)].astype(np.float64), ps.ctf


def _transformed(x: np.ndarray) -> np.ndarray:
    return np.asarray(x * 1e6 + 1e3, np.float32)


def test_prepare_particles_ignores_units_and_offset(sim):
    img, ctf = sim
    a = prepare_particles(img.astype(np.float32), ctf)
    b = prepare_particles(_transformed(img), ctf)
    assert abs(b.scale / a.scale - 1e6) < 1e-3 * 1e6
    # the offset (1e3 = about one noise sd of the scaled images) is gone; only float32 rounding of the input remains
    err = float((a.ht - b.ht).norm() / a.ht.norm())
    assert err < 1e-4, err
    # per-image offsets too (a different constant on every image)
    offs = np.random.default_rng(0).normal(0, 5 * img.std(), N)[:, None, None]
    c = prepare_particles((img + offs).astype(np.float32), ctf)
    c_dc = BOX // 2
    keep = torch.ones(BOX + 1, BOX + 1, dtype=torch.bool)
    keep[c_dc, c_dc] = False   # DC: the offset's only trace in a windowless world; the stages never read it
    err = float((a.ht[:, keep] - c.ht[:, keep]).norm() / a.ht[:, keep].norm())
    assert err < 1e-3, err


def test_prepare_particles_near_float32_limits(sim):
    img, _ = sim
    x = img / np.abs(img).max()
    a = prepare_particles(x.astype(np.float32))
    huge = prepare_particles((x * 1e37).astype(np.float32))   # the float32 transform of x * 1e37 would overflow
    assert torch.isfinite(huge.ht).all()
    assert float((a.ht - huge.ht).norm() / a.ht.norm()) < 1e-4
    tiny = prepare_particles((x * 1e-30).astype(np.float32))
    assert float((a.ht - tiny.ht).norm() / a.ht.norm()) < 1e-3


def test_prepare_particles_refuses_nan_and_constant_stacks():
    x = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    x[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="image 3"):
        prepare_particles(x)
    with pytest.raises(ValueError, match="constant"):
        prepare_particles(np.full((8, 16, 16), 7.0, np.float32))


def test_seed_poses_do_not_depend_on_units_or_offset(sim):
    """The seed's poses for the stack x and for 1e6 x + 1e3 agree (a small SeedConfig: ~10 s per run)."""
    img, ctf = sim
    cfg = SeedConfig(box_global=16, n_subset=N, n_restarts=1, iters_global=4, grid_dirs=48, grid_psi=12,
                     max_shift_px=1.5, box_search=16, iters_search=1, boxes_local=(16, 32), iters_local=1,
                     box_research=0, box_hetero=16, n_states=2, iters_als=10)
    r0 = seed_abinit(img.astype(np.float32), ctf, cfg)
    r1 = seed_abinit(_transformed(img), ctf, cfg)
    from cryofire_app.physics.rotations import geodesic_angle

    ang = geodesic_angle(torch.as_tensor(r0.rot, dtype=torch.float64),
                         torch.as_tensor(r1.rot, dtype=torch.float64)).numpy()   # degrees
    # float32 rounding of the transformed input only: the old normalisation (std with the offset) gave ~110 deg
    assert np.mean(ang < 0.5) >= 0.97, np.percentile(ang, [50, 90, 100])
    assert np.mean(np.abs(r0.trans_px - r1.trans_px).max(1) < 0.1) >= 0.97
    assert np.mean(r0.state == r1.state) >= 0.97
    assert np.isfinite(r1.volume).all() and np.isfinite(r1.state_score).all()


def test_trainer_norm_is_scale_equivariant_and_robust(tmp_path):
    from cryofire_app.training.dataset import Preprocessor

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 16, 16))
    p0, p1, p2 = Preprocessor(16, 16), Preprocessor(16, 16), Preprocessor(16, 16)
    s0 = p0.fit_norm(x.astype(np.float32), np.arange(64))
    s1 = p1.fit_norm((x * 1e6).astype(np.float32), np.arange(64))
    assert np.allclose(np.array(s1) / np.array(s0), 1e6, rtol=1e-5)
    y0, Y0 = p0(x[:4])
    y1, Y1 = p1(x[:4] * 1e6)
    assert torch.allclose(y0, y1, rtol=1e-4, atol=1e-5) and torch.allclose(Y0, Y1, rtol=1e-4, atol=1e-5)
    # one image a million times brighter does not set the scale for the other 63
    bad = x.copy()
    bad[7] *= 1e6
    s2 = p2.fit_norm(bad.astype(np.float32), np.arange(64))
    assert abs(s2[0] / s0[0] - 1) < 0.1, (s2, s0)


def test_nan_in_training_stops_cleanly_keeping_the_last_good_checkpoint(tmp_path):
    """Weights turned NaN mid-run (a fault injected into the real model): no checkpoint is written from them, the run
    stops with a Failed event that says where (step, images, phase) and names the last good checkpoint."""
    from cryofire_app.training.config import DecoderConfig, EncoderConfig, TrainConfig
    from cryofire_app.training.events import Checkpoint, Failed, Finished
    from cryofire_app.training.trainer import Trainer

    simulate(SimulationConfig(outdir=str(tmp_path / "sim"), n=40, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=16,
                              snr=1.0, seed=0, progress=False))
    cfg = TrainConfig.of(particles=str(tmp_path / "sim" / "particles.star"), outdir=str(tmp_path / "run"), zdim=2,
                         schedule="amortized", num_images=96, pose_only_images=32, batch_size=8, checkpoint_every=16,
                         device="cpu", num_threads=1, encoder=EncoderConfig(channels=(8,), hidden=16),
                         decoder=DecoderConfig(hidden=16, layers=1, pe_dim=8))
    tr = Trainer(cfg)
    events = tr.run()
    for ev in events:
        if isinstance(ev, Checkpoint):
            break
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    good = last.read_bytes()
    with torch.no_grad():
        next(tr.model.parameters()).view(-1)[0] = float("nan")
    assert tr.save_checkpoint() == last and last.read_bytes() == good     # refused: NaN weights
    rest = list(events)
    failed = [e for e in rest if isinstance(e, Failed)]
    assert len(failed) == 1 and not any(isinstance(e, (Finished, Checkpoint)) for e in rest)
    assert "loss became nan" in failed[0].message and f"last good checkpoint {last}" in failed[0].message
    assert "images seen" in failed[0].message and "step" in failed[0].message
    assert last.read_bytes() == good
