"""Conventions of the ab initio seeding stage (cryofire_app.reconstruct) against the physics module.

Noise-free CTF-modulated projections of a known map at known rotations and shifts (made with physics.projector /
ctf / shift exactly as docs/design.md states them) must give back those rotations and shifts with no global alignment
(the map fixes the frame and the hand), and back-projection at the true poses must give back the map.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryofire_app.io import read_mrc
from cryofire_app.physics import (
    FourierProjector,
    Lattice,
    ctf_from_params,
    fourier_resize,
    geodesic_angle,
    lattice_to_image,
    random_rotations,
    translate_ht,
)
from cryofire_app.reconstruct.data import prepare_particles, stage_data
from cryofire_app.reconstruct.grids import local_perturbations, shift_grid, so3_grid
from cryofire_app.reconstruct.search import backproject, global_search, local_search
from cryofire_app.reconstruct.volume import HartleyAccumulator, slicing_volume

MAP = Path(__file__).resolve().parents[1] / "cryofire_app" / "resources" / "ribosome70S_65.mrc"


def ribosome(d: int) -> torch.Tensor:
    v, _ = read_mrc(MAP)
    return fourier_resize(torch.tensor(np.array(v, dtype=np.float32)), d, ndim=3)


def simulate(vol: torch.Tensor, n: int, max_shift: float, seed: int, snr: float | None = None, apix: float = 7.0):
    """Observed images: C * slice(vol, rot), content moved by -t (so +t re-centres it), optional white noise."""
    g = torch.Generator().manual_seed(seed)
    d = vol.shape[-1]
    rot = random_rotations(n, generator=g)
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift
    lat = Lattice(d)
    df = 8000 + 12000 * torch.rand(n, generator=g)
    ctf = torch.stack([torch.full((n,), float(d)), torch.full((n,), apix), df, df * 0.97,
                       180 * torch.rand(n, generator=g), torch.full((n,), 300.0), torch.full((n,), 2.7),
                       torch.full((n,), 0.1), torch.zeros(n)], 1)
    Y = FourierProjector(vol, pad=2).slice(rot) * ctf_from_params(lat.freqs2d, ctf)
    Y = translate_ht(Y, Y[:, lat.neg_index], lat.freqs2d, -t)
    img = lattice_to_image(Y, d)
    if snr is not None:
        img = img + torch.randn(img.shape, generator=g) * img.std() / math.sqrt(snr)
    return img.numpy(), ctf.numpy(), rot, t


def test_grids_are_proper_rotations():
    g = so3_grid(48, 12, offset=random_rotations(1, generator=torch.Generator().manual_seed(1))[0])
    assert g.shape == (576, 3, 3)
    eye = torch.eye(3).expand_as(g)
    assert torch.allclose(g @ g.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(g), torch.ones(576), atol=1e-5)
    # view directions (row 2) spread over the whole sphere: mean close to 0
    assert float(g[:, 2].mean(0).norm()) < 0.05
    p = local_perturbations(math.radians(2.0))
    assert torch.allclose(p[13], torch.eye(3), atol=1e-6)
    ang = geodesic_angle(p, torch.eye(3).expand_as(p))
    assert float(ang.max()) == pytest.approx(2.0 * math.sqrt(3), rel=1e-3)
    s = shift_grid(1.0, 0.5)
    assert s.shape == (25, 2) and float(s.abs().max()) == 1.0


def test_backprojection_at_true_poses_recovers_the_map():
    vol = ribosome(24)
    img, ctf, rot, t = simulate(vol, 300, max_shift=1.5, seed=0)
    data = stage_data(prepare_particles(img, ctf), 24, 12)
    acc = HartleyAccumulator(24)
    backproject(acc, data, rot, t)
    rec, info = acc.solve(1e-6)
    # the reconstruction is in the normalised data's units: compare shapes by correlation (CTF zeros and the soft
    # window lose a little; 0.95 would fail for a wrong rotation convention or shift sign, which gives < 0.5)
    c = np.corrcoef(rec.numpy().ravel(), vol.numpy().ravel())[0, 1]
    assert c > 0.95, c
    wrong = np.corrcoef(_bp(data, rot.transpose(1, 2), t).ravel(), vol.numpy().ravel())[0, 1]
    flipped_t = np.corrcoef(_bp(data, rot, -t).ravel(), vol.numpy().ravel())[0, 1]
    assert wrong < c - 0.2 and flipped_t < c - 0.02, (wrong, flipped_t, c)


def _bp(data, rot, t) -> np.ndarray:
    acc = HartleyAccumulator(data.d)
    backproject(acc, data, rot, t)
    return acc.solve(1e-6)[0].numpy()


def test_search_recovers_known_poses_without_alignment():
    """Exhaustive search (~15 degree grid) then local refinement against the true map finds the simulated rotations
    and shifts directly in the map's frame: no global rotation, no hand flip, shift sign as in docs/design.md."""
    d = 32
    vol = ribosome(d)
    img, ctf, rot, t = simulate(vol, 80, max_shift=1.5, seed=1)
    parts = prepare_particles(img, ctf, window=False)  # noise-free and unwindowed: the map predicts the data exactly
    data = stage_data(parts, d, 15)
    vh = slicing_volume(vol / parts.scale)  # the data are divided by parts.scale
    grid = so3_grid(192, 24)
    shifts = shift_grid(1.5, 0.75)
    _, ri, ti = global_search(vh, data, grid, shifts, topk=2)
    r, tt = grid[ri], shifts[ti]
    step = math.radians(7.5)
    tstep = 0.5
    for _ in range(5):
        r, tt, _ = local_search(vh, data, r if r.dim() == 4 else r[:, None], tt if tt.dim() == 3 else tt[:, None],
                                local_perturbations(step), shift_grid(tstep, tstep))
        step /= 2
        tstep /= 2
    err = geodesic_angle(r, rot)
    # the last local step is 7.5 / 2^4 = 0.47 degrees per axis: a correct convention lands within ~0.5 degrees
    assert float(err.median()) < 0.6, float(err.median())
    assert float((err < 2).float().mean()) > 0.95
    terr = (tt - t).norm(dim=1)
    assert float(terr.median()) < 0.15, float(terr.median())


def test_density_sign_of_small_and_large_particles():
    """The seed's data-sign rule: positive density -> +1, its negative -> -1, for a particle filling most of the box
    and for a thin arc filling 0.1 % of it, both band-passed as a CTF-corrected map is (no lowest frequencies) and
    noisy. The former rule (extreme quantiles of the box) read the band-passed arc's ringing as its sign."""
    from cryofire_app.reconstruct.seed import density_sign

    rng = np.random.default_rng(0)
    D = 64
    ax = np.arange(D) - D // 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    big = np.exp(-(xx ** 2 + yy ** 2 + zz ** 2) / (2 * 12.0 ** 2))
    arc = ((np.abs(np.hypot(xx, yy) - 12) < 1.5) & (np.abs(zz) < 2) & (xx > 0)).astype(float)
    k = np.fft.fftfreq(D) * D
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    for v, band in ((big, (1, 16)), (arc, (2, 12)), (arc, (3, 16))):
        f = np.fft.fftn(v)
        f[(kk < band[0]) | (kk > band[1])] = 0
        bp = np.fft.ifftn(f).real
        noisy = bp + 0.1 * bp.std() * rng.standard_normal(bp.shape)
        assert density_sign(noisy) == 1 and density_sign(-noisy) == -1, band
