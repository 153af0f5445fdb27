"""Synthetic distill images (training.synthetic.SeedRenderer) against the project's simulator.

256 images of box 32 simulated from the bundled 70S map (one state, SNR 1, random CTF, shifts <= 3 px, RELION sign:
particles white). Fitted with the simulator's own map, poses and shifts, the renderer must explain the images exactly
as the simulator made them: amplitude 1 on the sign-corrected data (the projector, CTF, shift direction and sign all
agree with the simulation's conventions) and the residual's power equal to the simulator's noise variance. The
synthetic encoder inputs must then look like the real ones (same normalised power)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_app.io import load_particles, read_map, read_pose_pkl
from cryofire_app.physics.fft import fourier_resize
from cryofire_app.simulate import DEMO_MAP, DEMO_MAP_APIX, SimulationConfig, simulate
from cryofire_app.training import TrainConfig
from cryofire_app.training.dataset import ParticleData
from cryofire_app.training.synthetic import SeedRenderer

N, BOX = 256, 32


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "sim"
    res = simulate(SimulationConfig(outdir=str(out), n=N, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=BOX, snr=1.0,
                                    max_shift_px=3.0, seed=3, progress=False))
    data = ParticleData(load_particles(str(out / "particles.star")), BOX)
    data.prep.fit_norm(data.images, np.arange(N))
    rot, trans = read_pose_pkl(out / "poses.pkl")
    vol = read_map(out / "gt_state_0.mrc")[0].astype(np.float32)
    return res, data, vol, rot, trans * BOX


def test_renderer_explains_simulated_images_with_their_conventions(sim):
    res, data, vol, rot, trans = sim
    pos = np.arange(N)
    r = SeedRenderer.fit(vol, data, pos, rot, trans, sign=-1.0)   # simulator: RELION sign, particles white
    noise_var = res.noise_std ** 2
    print(f"\namplitude {r.amplitude:.4f}, noise variance {r.noise_variance:.4g} vs simulated {noise_var:.4g}")
    assert abs(r.amplitude - 1.0) < 0.03, r.amplitude
    assert abs(r.noise_variance / noise_var - 1.0) < 0.05, (r.noise_variance, noise_var)
    # the shift direction matters: content moved by +t instead of -t leaves much of the signal in the residual
    wrong = SeedRenderer.fit(vol, data, pos, rot, -trans, sign=-1.0)
    assert wrong.noise_variance > 1.2 * noise_var and wrong.amplitude < 0.8, (wrong.noise_variance, wrong.amplitude)
    # the data's sign: on the raw (white-particle) images the map's projection fits with a negative scale, refused
    with pytest.raises(ValueError, match="does not explain"):
        SeedRenderer.fit(vol, data, pos, rot, trans, sign=1.0)


def test_synthetic_inputs_look_like_the_real_ones(sim):
    _, data, vol, rot, trans = sim
    r = SeedRenderer.fit(vol, data, np.arange(N), rot, trans, sign=-1.0)
    x, R, t = r.render(512, torch.Generator().manual_seed(0))
    assert x.shape == (512, BOX, BOX) and R.shape == (512, 3, 3) and t.shape == (512, 2)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(512, 3, 3), atol=1e-5)
    assert np.isin(t.numpy().round(4), trans.astype(np.float32).round(4)).all()   # shifts drawn from the particles'
    real = data.load(np.arange(N), with_Y=False).y_real * -1.0
    p_syn, p_real = float((x ** 2).mean()), float((real ** 2).mean())
    print(f"\nnormalised power: synthetic {p_syn:.4f}, real {p_real:.4f}")
    assert abs(p_syn / p_real - 1.0) < 0.05, (p_syn, p_real)
    # the same generator state gives the same images; the stream moves on otherwise
    x2 = r.render(512, torch.Generator().manual_seed(0))[0]
    assert torch.equal(x, x2)
    assert not torch.allclose(x, r.render(512, torch.Generator().manual_seed(1))[0])


def test_synth_ratio_config():
    d = TrainConfig.of(schedule="seeded").to_dict()
    assert d["seeded"]["distill_synth_ratio"] == 0.5
    del d["seeded"]["distill_synth_ratio"]   # a run saved before synthetic distill images reads real ones only
    assert TrainConfig.from_dict(d).seeded.distill_synth_ratio == 0.0


def test_band_limited_renderer_gives_the_encoder_the_same_images(sim):
    """limit_band(box) projects only what an encoder reading the images cropped to ``box`` sees: after the window and
    that crop, the noise-free images agree with the full band's to a small fraction of their power."""
    _, data, vol, rot, trans = sim
    full = SeedRenderer.fit(vol, data, np.arange(N), rot, trans, sign=-1.0)
    ctf, t = data.ctf[:64], torch.as_tensor(trans[:64], dtype=torch.float32)
    R = torch.as_tensor(rot[:64], dtype=torch.float32)
    win = data.prep.window

    def seen(r: SeedRenderer) -> torch.Tensor:      # the encoder's input before its normalisation: window, then crop
        return fourier_resize(r.clean(R, ctf, t) * win, BOX // 2, ndim=2)

    a, c_full = seen(full), full.clean(R, ctf, t)
    band = full.limit_band(BOX // 2)                # narrows in place: one fit serves both bands
    assert band.rmax == pytest.approx(0.5 * 2 ** 0.5 / 2)
    rel = float(((seen(band) - a) ** 2).sum() / (a ** 2).sum())
    # what the band drops is visible at the full box: the clean images there differ by much more
    rel_full = float(((band.clean(R, ctf, t) - c_full) ** 2).sum() / (c_full ** 2).sum())
    print(f"\nband-limited vs full, relative power of the difference: encoder's crop {rel:.2e}, "
          f"full box {rel_full:.2e}")
    # measured 9.6e-4 (the window's spread across the disc's edge): 0.1 % of the signal's power, where issue 5's
    # images carry 10x the signal's power in noise; the full box loses 7 %
    assert rel < 2e-3 and rel_full > 20 * rel, (rel, rel_full)
    assert full.limit_band(BOX).rmax == 0.5                 # an encoder reading the whole box: the whole disc


def test_hetero_renderer_draws_each_group_with_its_own_map_and_z():
    """HeteroRenderer: groups drawn by size; each image is its group's map (noise-free here) and carries its z."""
    from cryofire_app.training.synthetic import HeteroRenderer, SeedRenderer

    D = 16
    rng = np.random.default_rng(0)
    vols = [torch.as_tensor(rng.normal(size=(D, D, D)).astype(np.float32)) for _ in range(2)]
    win, psd = torch.ones(D, D), torch.zeros(D, D)
    rs = [SeedRenderer(v, win, 1.0, 1.0, psd, None, torch.zeros(4, 2)) for v in vols]
    hr = HeteroRenderer(rs, torch.tensor([[-1.0, 0.5], [2.0, 0.0]]), np.array([300, 100]))
    x, rot, t, z = hr.render(400, torch.Generator().manual_seed(1))
    assert x.shape == (400, D, D) and rot.shape == (400, 3, 3) and z.shape == (400, 2)
    first = (z[:, 0] == -1.0)
    assert torch.all(first | (z[:, 0] == 2.0)) and 0.65 < float(first.float().mean()) < 0.85
    for k, sel in ((0, first), (1, ~first)):
        np.testing.assert_allclose(x[sel].numpy(), rs[k].clean(rot[sel], None, t[sel]).numpy(), atol=1e-4)
    with pytest.raises(ValueError):
        HeteroRenderer(rs, torch.zeros(1, 2), np.array([1, 1]))
