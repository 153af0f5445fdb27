"""Model shapes, the exact mirror, pose compensation, KL sign, checkpointable decoder (seeded, seconds)."""
from __future__ import annotations

import math

import torch

from cryofire_app.model import CryoFIRE, Encoder, HartleyDecoder, compensate_mirror, mask_points, mirror_images
from cryofire_app.model.decoder import GridDecoder
from cryofire_app.physics.fft import ht2_center, symmetrize_ht
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.training.losses import kl_normal, reparameterize, symmetric_min
from test_train_data import blob_volume, ctf_rows, simulate_images


def test_shapes_and_rotations_are_proper():
    B, D, d = 5, 32, 8
    model = CryoFIRE(D, d, dict(channels=(8, 16, 32)), dict(pe_dim=16, hidden=32, layers=2))
    mp = mask_points(Lattice(D), 6)
    y = torch.randn(B, D, D)
    Y = torch.randn(B, (D + 1) ** 2)
    ctf = torch.as_tensor(ctf_rows(B, D, 2.0))
    err, enc = model(y, Y, ctf, mp, pose_only=False)
    assert err.shape == (2, B)
    assert enc["rot"].shape == (2 * B, 3, 3) and enc["trans"].shape == (2 * B, 2) and enc["z"].shape == (2 * B, d)
    R = enc["rot"]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(2 * B, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2 * B), atol=1e-5)
    # the encoder handles a batch of 3 (the cross-product pitfall) and a variational head
    enc3 = Encoder(D, d, channels=(8, 16), variational=True)(torch.randn(3, D, D))
    assert enc3["rot"].shape == (3, 3, 3) and enc3["z_logvar"].shape == (3, d)
    assert mp.M == int(Lattice(D).circle_mask(6).sum())


def test_mirror_is_the_exact_hartley_flip():
    lat = Lattice(16)
    x = torch.randn(4, 16, 16, dtype=torch.float64)
    H = symmetrize_ht(ht2_center(x)).reshape(4, -1)
    Hm = symmetrize_ht(ht2_center(mirror_images(x))).reshape(4, -1)
    assert torch.allclose(Hm, H[:, lat.flipx_index], atol=1e-10)
    # the naive flip is not (it is off by one pixel)
    Hf = symmetrize_ht(ht2_center(torch.flip(x, dims=[-1]))).reshape(4, -1)
    assert not torch.allclose(Hf, H[:, lat.flipx_index], atol=1e-3)


def test_pose_compensation_is_exact():
    """With a ground-truth grid decoder, the mirrored branch at the compensated pose scores exactly like branch 0."""
    torch.manual_seed(0)
    D, B = 16, 6
    vol = blob_volume(D, 1)
    rot = random_rotations(B, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([[1.5, -0.75]]).repeat(B, 1)
    ctf = torch.as_tensor(ctf_rows(B, D, 4.0, seed=2))
    img = simulate_images(vol, rot, ctf.numpy(), t).double()
    Y = symmetrize_ht(ht2_center(img)).reshape(B, -1).float()
    model = CryoFIRE(D, 0, dict(channels=(8,)), dict(pe_dim=4, hidden=8, layers=1))
    model.decoder = GridDecoder.from_volume(vol)
    mp = mask_points(Lattice(D), D // 2)
    # branch 1 pose = the inverse of the compensation applied to the true pose
    rot1, t1 = compensate_mirror(rot, t)            # diag(-1,1,-1) is an involution, as is t -> (-tx, ty)
    enc = {"rot": torch.cat([rot, rot1]), "trans": torch.cat([t, t1])}
    z = torch.zeros(2 * B, 0)
    err = model.branch_errors(Y, ctf, enc, z, mp)
    energy = (Y[:, mp.idx] ** 2).mean(1)
    assert torch.all(err[0] < 0.05 * energy)                         # the model reproduces the images
    assert torch.allclose(err[1], err[0], rtol=1e-4, atol=1e-6 * float(energy.mean()))
    back_rot, back_t = compensate_mirror(rot1, t1)
    assert torch.equal(back_rot, rot) and torch.equal(back_t, t)
    # without compensation (same pose on the mirrored image) the fit is bad
    enc_bad = {"rot": torch.cat([rot, rot]), "trans": torch.cat([t, t])}
    err_bad = model.branch_errors(Y, ctf, enc_bad, z, mp)
    assert torch.all(err_bad[1] > 10 * err[0])
    loss, branch = symmetric_min(torch.stack([err_bad[1], err[0]]))
    assert torch.all(branch == 1) and math.isclose(float(loss), float(err[0].mean()), rel_tol=1e-6)


def test_kl_sign_and_reparameterization():
    mu = torch.zeros(4, 3)
    lv = torch.zeros(4, 3)
    assert torch.allclose(kl_normal(mu, lv), torch.zeros(4))
    assert torch.all(kl_normal(mu + 1.0, lv) > 0) and torch.all(kl_normal(mu, lv + 2.0) > 0)
    assert torch.allclose(kl_normal(mu + 1.0, lv), torch.full((4,), 1.5))
    eps = torch.ones(4, 3)
    assert torch.allclose(reparameterize(mu, torch.full((4, 3), math.log(4.0)), eps), torch.full((4, 3), 2.0))


def test_decoder_state_dict_carries_pe_and_scale():
    dec = HartleyDecoder(32, 4, pe_dim=8, hidden=16, layers=1, generator=torch.Generator().manual_seed(1))
    sd = dec.state_dict()
    assert "omega" in sd and float(sd["pe_scale"]) == 16.0 and int(sd["train_D"]) == 32
    other = HartleyDecoder(32, 4, pe_dim=8, hidden=16, layers=1, generator=torch.Generator().manual_seed(2))
    k = torch.rand(2, 10, 3) - 0.5
    z = torch.randn(2, 4)
    assert not torch.allclose(dec(k, z), other(k, z))
    other.load_state_dict(sd)
    assert torch.allclose(dec(k, z), other(k, z))


def test_volume_decoding_zeroes_only_the_3d_dc():
    model = CryoFIRE(16, 2, dict(channels=(8,)), dict(pe_dim=8, hidden=16, layers=1))
    v = model.decode_volume_ht(torch.zeros(2))
    c = 8
    assert v[c, c, c] == 0
    assert torch.all(v[:, c, c][torch.arange(16) != c] != 0)     # the DC line (0, 0, kz) is kept
