"""Issue 6 speed paths: feature-grid decoder (half-lattice evaluation), pixel-unshuffle stem, channels-last,
mixed precision on the CPU, encoder-only inference without Hartley transforms (seeded, seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_app.analysis.run import Run
from cryofire_app.model import CryoFIRE, Encoder, mask_points
from cryofire_app.model.cryofire import autocast_context
from cryofire_app.model.decoder import FeatureGridDecoder
from cryofire_app.physics.fft import fourier_resize
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.training import DecoderConfig, EncoderConfig, Finished, Step, TrainConfig, Trainer
from cryofire_app.training.dataset import ParticleData
from cryofire_app.training.inference import predict
from test_train_data import ctf_rows, make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mask_points_are_ordered_as_half_then_negatives():
    lat = Lattice(16)
    mp = mask_points(lat, 6)
    h = mp.M // 2
    assert mp.M == int(lat.circle_mask(6).sum()) and mp.M % 2 == 0
    assert torch.equal(mp.coords[h:], -mp.coords[:h])
    assert torch.equal(mp.idx[h:], lat.neg_index[mp.idx[:h]])
    assert bool((mp.idx[:h] < lat.dc_index).all())


def test_half_lattice_pairs_match_pointwise_evaluation():
    """forward_pairs(k) == [forward(k), forward(-k)] for rotated points and for the unrotated plane kz = 0 (ties);
    the half-space sign is odd; with half_lattice off the decoder is a plain function of k."""
    g = torch.Generator().manual_seed(0)
    dec = FeatureGridDecoder(16, 3, channels=4, hidden=8, generator=g)
    mp = mask_points(Lattice(16), 8)
    rot = torch.cat([torch.eye(3)[None], random_rotations(3, generator=g)])
    k = torch.matmul(mp.coords[: mp.M // 2], rot)             # (4, M/2, 3); the first is on the plane kz = 0
    z = torch.randn(4, 3, generator=g)
    pairs = dec.forward_pairs(k, z)
    both = dec(torch.cat([k, -k], 1), z)
    assert torch.allclose(pairs, both, atol=1e-6)
    s = dec.half_space_sign(k)
    assert torch.equal(dec.half_space_sign(-k), -s) and bool((s.abs() == 1).all())
    # the representation is not trivially even or odd: H(k) != H(-k) in general
    assert not torch.allclose(pairs[:, : mp.M // 2], pairs[:, mp.M // 2:], atol=1e-3)
    full = FeatureGridDecoder(16, 3, channels=4, hidden=8, half_lattice=False, generator=g)
    assert torch.allclose(full.forward_pairs(k, z), full(torch.cat([k, -k], 1), z))


def test_unshuffle_stem_and_channels_last_compute_the_same_encoder():
    torch.manual_seed(0)
    x = torch.randn(5, 32, 32)
    for stem in ("conv", "unshuffle"):
        a = Encoder(32, 4, channels=(8, 16, 16), stem=stem)
        b = Encoder(32, 4, channels=(8, 16, 16), stem=stem, channels_last=True)
        b.load_state_dict(a.state_dict())
        oa, ob = a(x), b(x)
        for k in oa:
            assert torch.allclose(oa[k], ob[k], atol=1e-5), (stem, k)
    e = Encoder(32, 4, channels=(8, 16, 16), stem="unshuffle")
    assert e.cnn[0][0].in_channels == 4 and len(e.cnn) == 2    # 16 -> 8 -> 4: one block fewer than "conv"
    with pytest.raises(ValueError):
        Encoder(32, 4, stem="bogus")


def test_bf16_autocast_on_cpu_matches_fp32_loosely():
    torch.manual_seed(0)
    D, B = 16, 6
    model = CryoFIRE(D, 2, dict(channels=(8, 16), hidden=32), dict(arch="grid", hidden=16)).eval()
    mp = mask_points(Lattice(D), 6)
    y = torch.randn(B, D, D)
    Y = torch.randn(B, (D + 1) ** 2)
    ctf = torch.as_tensor(ctf_rows(B, D, 2.0))
    with torch.no_grad():
        e32, enc32 = model(y, Y, ctf, mp)
        with autocast_context("cpu", "bf16"):
            e16, enc16 = model(y, Y, ctf, mp)
    assert e16.dtype == torch.float32 and enc16["rot"].dtype == torch.float32
    assert torch.allclose(e16, e32, rtol=0.05)
    assert float((enc16["rot"] - enc32["rot"]).abs().max()) < 0.05
    with pytest.raises(ValueError):
        autocast_context("cpu", "fp16")


def test_trainer_with_fast_preset_and_bf16_runs_and_reloads(tmp_path):
    """Grid decoder + unshuffle stem + channels-last + bf16 through the real Trainer, then analysis.Run decodes."""
    data = make_dataset(tmp_path / "synth", n=64, D=16, seed=1, max_shift=1.0, noise_std=0.3)
    cfg = TrainConfig.of(particles=str(data.mrcs), ctf=str(data.ctf_pkl), outdir=str(tmp_path / "run"), D=16, zdim=2,
                         batch_size=16, schedule="amortized", num_images=128, pose_only_images=32, freq_start=4,
                         freq_add_every=32, checkpoint_every=64, latents_every=64, val_fraction=0.1, lr=1e-3,
                         device="cpu", precision="bf16", channels_last=True,
                         encoder=EncoderConfig(channels=(8, 16), hidden=32, stem="unshuffle"),
                         decoder=DecoderConfig(arch="grid", grid_channels=4, grid_hidden=16))
    evs = list(Trainer(cfg).run())
    assert isinstance(evs[-1], Finished)
    losses = [e.loss for e in evs if isinstance(e, Step)]
    assert len(losses) == 8 and all(np.isfinite(losses))
    run = Run(tmp_path / "run")
    assert run.config.decoder.arch == "grid" and run.config.encoder.stem == "unshuffle"
    vol = run.decode(np.zeros((1, 2), np.float32))
    assert vol.shape == (1, 16, 16, 16) and np.isfinite(vol).all()
    with pytest.raises(Exception, match="fp16"):   # fp16 on the CPU: refused when the config is made ...
        TrainConfig.from_dict(dict(cfg.to_dict(), precision="fp16", outdir=str(tmp_path / "bad")))
    bad = TrainConfig.from_dict(dict(cfg.to_dict(), outdir=str(tmp_path / "bad")))
    bad.precision = "fp16"
    with pytest.raises(Exception, match="fp16"):   # ... and by the trainer when set afterwards
        list(Trainer(bad).run())


def test_encoder_only_inference_skips_the_hartley_transform(tmp_path):
    from cryofire_app.io import load_particles

    data = make_dataset(tmp_path / "synth", n=40, D=16, seed=2, max_shift=1.0, noise_std=0.3)
    pd = ParticleData(load_particles(str(data.mrcs), ctf=str(data.ctf_pkl)))
    b = pd.load(np.arange(4), with_Y=False)
    assert b.Y is None and b.y_real.shape == (4, 16, 16)
    assert torch.equal(b.y_real, pd.load(np.arange(4)).y_real)
    model = CryoFIRE(16, 2, dict(channels=(8, 16), hidden=32), dict(arch="grid"))
    enc = predict(model, pd, np.arange(40), select="encoder", batch=16)
    dec = predict(model, pd, np.arange(40), select="decoder", batch=16, sym=False, radius=4)
    assert np.allclose(enc.rot, dec.rot, atol=1e-6) and np.isnan(enc.loss).all() and np.isfinite(dec.loss).all()


@pytest.mark.parametrize("stem", ["conv", "unshuffle"])
def test_encoder_input_box_is_a_fourier_crop_of_the_input(stem):
    """Encoder(D=64, box=32) is Encoder(32) run on the Fourier-cropped image (same weights), with the translation
    given in pixels of the 64 box (twice the 32-box value)."""
    torch.manual_seed(0)
    big = Encoder(64, zdim=2, channels=(8, 16, 32, 64), stem=stem, box=32)
    small = Encoder(32, zdim=2, channels=(8, 16, 32, 64), stem=stem)
    small.load_state_dict(big.state_dict())
    x = torch.randn(3, 64, 64)
    a, b = big(x), small(fourier_resize(x, 32, ndim=2).float())
    assert big.box == 32 and big.feat_dim == small.feat_dim
    assert torch.allclose(a["rot"], b["rot"], atol=1e-5) and torch.allclose(a["z_mu"], b["z_mu"], atol=1e-5)
    assert torch.allclose(a["trans"], 2 * b["trans"], atol=1e-5)
    assert Encoder(64, box=None).box == 64 and Encoder(32, box=64).box == 32
    with pytest.raises(ValueError, match="input box"):
        Encoder(64, box=31)


def test_encoder_batch_norm_uses_running_statistics_at_eval():
    """norm="batch": batch statistics while training, running statistics in eval mode (an image's pose then does not
    depend on the other images of its batch); unknown norms are refused."""
    torch.manual_seed(0)
    enc = Encoder(32, zdim=2, channels=(8, 16), norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    x = torch.randn(8, 32, 32)
    enc.train()
    enc(x)                                   # updates the running statistics
    enc.eval()
    with torch.no_grad():
        alone = enc(x[:1])["rot"]
        in_batch = enc(x)["rot"][:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)
    with pytest.raises(ValueError, match="norm"):
        Encoder(32, norm="layer")
