"""Synthetic particle data for the model/training tests (made here with physics.projector + ctf), and data tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryofire_app.physics.ctf import ctf_from_params
from cryofire_app.physics.fft import ht2_center, symmetrize_ht
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.projector import FourierProjector, lattice_to_image
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.physics.shift import translate_ht_full


def blob_volume(D: int, seed: int = 0, n_blobs: int = 6, sigma: float | None = None) -> torch.Tensor:
    """An asymmetric positive density (z, y, x): gaussian blobs of different heights inside radius D/4."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(D, dtype=torch.float32) - D // 2
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    vol = torch.zeros(D, D, D)
    sigma = sigma or D / 12
    for i in range(n_blobs):
        c = (torch.rand(3, generator=g) * 2 - 1) * D / 5
        a = 0.5 + torch.rand(1, generator=g).item() + 0.3 * i
        vol += a * torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * sigma ** 2))
    return vol


def ctf_rows(n: int, D: int, apix: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dfu = rng.uniform(8000, 20000, n)
    rows = np.stack([np.full(n, D), np.full(n, apix), dfu, dfu - rng.uniform(0, 500, n), rng.uniform(0, 180, n),
                     np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1), np.zeros(n)], 1)
    return rows.astype(np.float32)


def simulate_images(vol: torch.Tensor, rot: torch.Tensor, ctf: np.ndarray | None, trans_px: torch.Tensor,
                    noise_std: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Observed images: projection * CTF, content moved by -t (so +t re-centres it), plus white noise."""
    D = vol.shape[-1]
    lat = Lattice(D)
    proj = FourierProjector(vol).project(rot)
    Y = symmetrize_ht(ht2_center(proj)).reshape(len(rot), -1)
    if ctf is not None:
        Y = Y * ctf_from_params(lat.freqs2d, torch.as_tensor(ctf))
    Y = translate_ht_full(Y, lat, -trans_px)
    img = lattice_to_image(Y, D)
    if noise_std > 0:
        g = torch.Generator().manual_seed(seed + 99)
        img = img + noise_std * img.std() * torch.randn(img.shape, generator=g)
    return img.float()


@dataclass
class SynthData:
    mrcs: Path
    ctf_pkl: Path | None
    rot: np.ndarray
    trans: np.ndarray
    vol: torch.Tensor
    ctf: np.ndarray | None
    images: np.ndarray


def make_dataset(folder: Path, n: int = 64, D: int = 16, seed: int = 0, ctf: bool = True, max_shift: float = 0.0,
                 noise_std: float = 0.0, apix: float = 4.0, vol: torch.Tensor | None = None) -> SynthData:
    from cryofire_app.io import MrcStackWriter, write_ctf_pkl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = blob_volume(D, seed) if vol is None else vol
    g = torch.Generator().manual_seed(seed + 1)
    rot = random_rotations(n, generator=g)
    trans = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift
    rows = ctf_rows(n, D, apix, seed) if ctf else None
    imgs = simulate_images(vol, rot, rows, trans, noise_std, seed).numpy()
    mrcs = folder / "particles.mrcs"
    with MrcStackWriter(mrcs, D, apix) as w:
        w.write(imgs)
    ctf_pkl = None
    if rows is not None:
        ctf_pkl = folder / "ctf.pkl"
        write_ctf_pkl(ctf_pkl, rows)
    return SynthData(mrcs, ctf_pkl, rot.numpy(), trans.numpy(), vol, rows, imgs)


def test_particle_data_crops_to_the_training_box(tmp_path):
    from cryofire_app.io import load_particles
    from cryofire_app.physics.fft import fourier_resize
    from cryofire_app.training.dataset import ParticleData, batch_schedule

    sd = make_dataset(tmp_path, n=40, D=32, seed=4, apix=2.0)
    ps = load_particles(sd.mrcs, ctf=sd.ctf_pkl)
    data = ParticleData(ps, D=16)
    assert data.D == 16 and abs(data.apix - 4.0) < 1e-6
    assert np.allclose(data.ctf[:, 0].numpy(), 16) and np.allclose(data.ctf[:, 1].numpy(), 4.0)
    data.prep.fit_norm(data.images, np.arange(40))
    b = data.load(np.array([5, 2, 9]))
    assert b.y_real.shape == (3, 16, 16) and b.Y.shape == (3, 17 * 17)
    small = fourier_resize(torch.as_tensor(sd.images[[5, 2, 9]]), 16) * data.prep.window
    assert torch.allclose(b.y_real, small.float() / data.prep.sigma_real, atol=1e-5)
    assert abs(float((b.Y ** 2).mean()) - 1.0) < 0.5        # normalized Hartley targets
    # the batch schedule is a pure function of (seed, images seen): a resume replays it
    a = batch_schedule(np.arange(40), 8, 0, 0)
    first = [next(a) for _ in range(7)]
    b2 = batch_schedule(np.arange(40), 8, 0, 24)
    assert all(np.array_equal(x, y) for x, y in zip(first[3:], [next(b2) for _ in range(4)]))
    assert sorted(np.concatenate(first[:5]).tolist()) == list(range(40))
    # the seed reads its particles through a view that resizes each slice on demand
    pos = np.array([30, 3, 17, 8, 25])
    view = data.resized_view(pos)
    whole = data.resized_images(pos)
    assert len(view) == 5 and whole.shape == (5, 16, 16)
    assert np.array_equal(view[1:4], whole[1:4]) and np.array_equal(view[0:5], whole)
    assert np.array_equal(view[2], whole[2])
