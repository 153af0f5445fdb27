"""Self-diagnosis without ground truth (cryofire_app.reconstruct.diagnose): true poses pass, random poses fail, a
random state split is flagged, and predicted poses of held-out particles are scored against the others' map.

Data: the project's simulator on the 70S map (../shared/fixtures), box 32, 1,200 images, SNR 0.3, two hinge states."""
from __future__ import annotations

import numpy as np
import pytest

from cryofire_app.physics.rotations import random_rotations
from cryofire_app.reconstruct.diagnose import DiagnoseConfig, diagnose, verdict
from volumes import simulate_70s

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim(tmp_path_factory, request):
    return simulate_70s(tmp_path_factory.mktemp("diag"), request.getfixturevalue("fixtures_dir"), n=1200, snr=0.3,
                        seed=3, max_shift=1.0)


CFG = DiagnoseConfig(n_score=200, grid_dirs=96, grid_psi=16)


def _heldout(n: int, k: int = 200) -> np.ndarray:
    out = np.zeros(n, bool)
    out[np.random.default_rng(1).permutation(n)[:k]] = True
    return out


def test_true_poses_converged_random_poses_failed(sim):
    n = len(sim["rot"])
    ho = _heldout(n)
    good = diagnose(sim["images"], sim["ctf"], sim["rot"], sim["trans"], state=sim["labels"], apix=10.0, heldout=ho,
                    config=CFG)
    level, reasons = verdict(good)
    assert good.n_particles == n - 200 and good.n_heldout == 200
    assert good.signal_ratio > 1.4 and good.signal_z > 15, good
    assert good.heldout_gain_median > 0.8 and good.heldout_agreement > 0.7, good
    assert good.state_auc > 0.8, good
    # an asymmetric molecule: held-out particles prefer one orientation (no second, separated pose fits as well)
    assert good.ambiguous_fraction < 0.1 and good.second_mode_z_median > 2 * 2.0, good
    assert level == "converged" and reasons == []
    # every pose random: a fit to noise; the held-out particles match its map no better than their null copies do
    rand = random_rotations(n).numpy()
    bad = diagnose(sim["images"], sim["ctf"], rand, np.zeros_like(sim["trans"]), apix=10.0, heldout=ho, config=CFG)
    level, reasons = verdict(bad)
    assert bad.signal_ratio < 1.1 and bad.heldout_gain_median < 0.3, bad
    assert level == "failed" and "no better than noise" in reasons[0]


def test_unsupported_states_bad_encoder_and_no_heldout(sim):
    rng = np.random.default_rng(0)
    n = len(sim["rot"])
    ho = _heldout(n, 150)
    rot = sim["rot"].copy()
    rot[ho] = random_rotations(int(ho.sum())).numpy()   # "encoder" poses of the held-out particles at chance
    diag = diagnose(sim["images"], sim["ctf"], rot, sim["trans"], state=rng.integers(0, 2, n), heldout=ho,
                    config=CFG)
    assert diag.signal_ratio > 1.4 and diag.heldout_gain_median < 0.3 and diag.state_auc < 0.58, diag
    level, reasons = verdict(diag)
    assert level == "uncertain" and len(reasons) == 2
    assert "encoder's poses" in reasons[0] and "state split" in reasons[1]
    # without held-out particles nothing can rule out a fit to noise: never "converged"
    diag = diagnose(sim["images"], sim["ctf"], sim["rot"], sim["trans"], config=CFG)
    assert diag.signal_ratio is None and diag.halves_gain_median > 0.8
    level, reasons = verdict(diag)
    assert level == "uncertain" and "no held-out particles" in reasons[0]


def test_null_images_keep_the_power_spectrum():
    from cryofire_app.reconstruct.diagnose import null_images

    x = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    x[:, 6:10, 6:10] += 5
    y = null_images(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.allclose(np.abs(np.fft.fft2(y)), np.abs(np.fft.fft2(x)), rtol=1e-4, atol=1e-3)
    assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 0.3


def test_a_run_on_pure_noise_says_failed(tmp_path):
    """Images of noise alone: the seed still returns poses, a map and two states, and the run writes its outputs
    with exit status 0, but its verdict (event, report.json) is "failed", naming the reason."""
    import json

    import torch

    from cryofire_app.io import write_mrc
    from cryofire_app.training import DecoderConfig, EncoderConfig, TrainConfig, Trainer
    from cryofire_app.training.events import Finished, Verdict

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    stack = tmp_path / "noise.mrcs"
    write_mrc(stack, rng.standard_normal((400, 32, 32)).astype(np.float32), apix=5.0)
    cfg = TrainConfig.of(particles=str(stack), outdir=str(tmp_path / "run"), zdim=2, batch_size=16, num_images=64,
                         seed=0, device="cpu", num_threads=1, checkpoint_every=10 ** 9, latents_every=10 ** 9,
                         val_fraction=0.1, schedule="seeded", encoder=EncoderConfig(channels=(8, 16, 32), hidden=64),
                         decoder=DecoderConfig(pe_dim=16, hidden=32, layers=2),
                         seed_config=dict(n_restarts=1, iters_global=3, iters_search=1, iters_local=1, iters_als=2))
    evs = list(Trainer(cfg).run())
    assert isinstance(evs[-1], Finished)
    v = [e for e in evs if isinstance(e, Verdict)]
    assert len(v) == 1 and v[0].verdict == "failed" and "no better than noise" in v[0].reasons[0], v
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["verdict"] == "failed" and report["checks"]["signal_ratio"] < 1.15
    assert (tmp_path / "run" / "pose.pkl").is_file()     # the outputs are there, and say they are not to be trusted
