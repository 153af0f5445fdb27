"""Basic identities of the physics layer: transforms, lattice, shifts, mirror, CTF, rotations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryofire_app.physics import (
    Lattice,
    center_crop_pad,
    compute_ctf,
    ctf_from_params,
    euler_relion_to_matrix,
    fft2_center,
    fourier_resize,
    geodesic_angle,
    ht2_center,
    ht3_center,
    ifft2_center,
    iht2_center,
    iht3_center,
    iht3_center_crop,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    matrix_to_r6,
    quaternion_to_matrix,
    r6_to_matrix,
    random_rotations,
    rotvec_to_matrix,
    symmetrize_ht,
    symmetrize_ht3,
    symmetrized_ht3_padded,
    translate_ht,
    translate_ht_full,
    window_mask,
)

D = 16


def _img(d=D, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, d, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- transforms
def test_ht_round_trip_2d_3d():
    x = _img()
    assert torch.allclose(iht2_center(ht2_center(x)), x, atol=1e-12)
    v = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    assert torch.allclose(iht3_center(ht3_center(v)), v, atol=1e-12)
    f = fft2_center(x)
    assert torch.allclose(ifft2_center(f).real, x, atol=1e-12)
    assert torch.allclose(ht2_center(x), f.real - f.imag)


@pytest.mark.parametrize("n,d", [(16, 8), (16, 16), (15, 7), (12, 5)])
def test_lean_inverse_3d_equals_full_inverse_then_crop(n, d):
    # the final maps' solve uses the slab-wise transform; it must be the full transform followed by the crop
    v = torch.randn(n, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + d))
    ref = center_crop_pad(iht3_center(v), d, 3)
    assert torch.allclose(iht3_center_crop(v, d, slab=3), ref, atol=1e-14)
    assert iht3_center_crop(v.float(), d).dtype == torch.float32
    with pytest.raises(ValueError):
        iht3_center_crop(v[None], d)


@pytest.mark.parametrize("d,n", [(8, 16), (6, 6), (5, 12)])
def test_lean_padded_forward_3d_equals_pad_then_full_transform(d, n):
    # the projector's (and so every slicing volume's) transform is the slab-wise one
    v = torch.randn(d, d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d + n))
    ref = symmetrize_ht3(ht3_center(center_crop_pad(v, n, 3)))
    assert torch.allclose(symmetrized_ht3_padded(v, n, slab=5), ref, atol=1e-12)
    with pytest.raises(ValueError):
        symmetrized_ht3_padded(v, n + 1)


def test_ht_is_cas_sum_from_centre_pixel():
    x = _img(d=8, b=1)[0]
    r = torch.arange(8, dtype=torch.float64) - 4
    k = r / 8
    # H[p, q] = sum_{i,j} x[i, j] cas(2 pi (ky_p y_i + kx_q x_j))
    arg = 2 * math.pi * (k[:, None, None, None] * r[None, None, :, None]
                         + k[None, :, None, None] * r[None, None, None, :])
    ref = (x[None, None] * (torch.cos(arg) + torch.sin(arg))).sum((-1, -2))
    assert torch.allclose(ht2_center(x), ref, atol=1e-10)
    # DC is at [D//2, D//2] and equals the sum
    assert torch.isclose(ht2_center(x)[4, 4], x.sum())


def test_symmetrize_and_neg_index_exact():
    lat = Lattice(D, dtype=torch.float64)
    assert torch.equal(lat.coords[lat.neg_index], -lat.coords)
    assert torch.equal(lat.coords[lat.flipx_index][:, 0], -lat.coords[:, 0])
    assert torch.equal(lat.coords[lat.flipx_index][:, 1], lat.coords[:, 1])
    assert torch.equal(lat.coords[lat.dc_index], torch.zeros(3, dtype=torch.float64))
    x = _img()
    y = symmetrize_ht(ht2_center(x)).reshape(3, -1)
    # HT of a real image satisfies nothing special, but the symmetrized lattice holds each frequency of the
    # D x D transform once more at the +Nyquist copies: check them against the periodic definition
    full = y.reshape(3, D + 1, D + 1)
    assert torch.equal(full[:, D, :D], full[:, 0, :D]) and torch.equal(full[:, :D, D], full[:, :D, 0])
    assert torch.equal(full[:, D, D], full[:, 0, 0])


def test_circle_mask_counts_match_method_spec():
    lat = Lattice(128)
    counts = {r: int(lat.circle_mask(r).sum()) for r in (3, 10, 32, 64)}
    assert counts == {3: 28, 10: 316, 32: 3208, 64: 12852}
    assert not lat.circle_mask(64)[lat.dc_index]


def test_fourier_resize_preserves_mean_and_round_trips():
    x = _img(d=32, b=2) + 3.0
    small = fourier_resize(x, 16)
    assert small.shape == (2, 16, 16)
    assert torch.allclose(small.mean((-1, -2)), x.mean((-1, -2)), atol=1e-10)
    big = fourier_resize(small, 32)
    assert torch.allclose(big.mean((-1, -2)), x.mean((-1, -2)), atol=1e-10)
    # crop after pad is exact
    assert torch.allclose(fourier_resize(big, 16), small, atol=1e-10)
    v = torch.randn(1, 12, 12, 12, dtype=torch.float64) + 1.5
    v2 = fourier_resize(v, 8)
    assert v2.shape == (1, 8, 8, 8) and torch.allclose(v2.mean(), v.mean(), atol=1e-10)
    odd = torch.randn(9, 9, 9, dtype=torch.float64)
    assert torch.allclose(fourier_resize(odd, 8).mean(), odd.mean(), atol=1e-10)
    # a band-limited image survives a round trip through a larger box unchanged
    lowpass = fourier_resize(fourier_resize(x, 8), 32)
    assert torch.allclose(fourier_resize(fourier_resize(lowpass, 64), 32), lowpass, atol=1e-10)


def test_window_mask_profile():
    w = window_mask(64)
    assert w[32, 32] == 1 and w[0, 0] == 0
    assert w[32, 32 + int(0.85 * 32) - 1] == 1  # inside r_in
    assert 0 < w[32, 32 + 30] < 1


# ---------------------------------------------------------------- shifts and mirror
def test_translate_one_column_equals_roll():
    lat = Lattice(D, dtype=torch.float64)
    x = _img()
    y = symmetrize_ht(ht2_center(x)).reshape(3, -1)
    t = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    ref = symmetrize_ht(ht2_center(torch.roll(x, 1, dims=-1))).reshape(3, -1)
    assert torch.allclose(translate_ht_full(y, lat, t), ref, atol=1e-9)
    t = torch.tensor([[0.0, -2.0], [3.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    ref = torch.stack([symmetrize_ht(ht2_center(torch.roll(x[i], (int(t[i, 1]), int(t[i, 0])), dims=(0, 1))))
                       for i in range(3)]).reshape(3, -1)
    assert torch.allclose(translate_ht(y, y[:, lat.neg_index], lat.freqs2d, t), ref, atol=1e-9)


def test_translate_subpixel_composes_and_inverts():
    lat = Lattice(D, dtype=torch.float64)
    y = symmetrize_ht(ht2_center(_img())).reshape(3, -1)
    t = torch.tensor([[0.3, -1.7]] * 3, dtype=torch.float64)
    back = translate_ht_full(translate_ht_full(y, lat, t), lat, -t)
    assert torch.allclose(back, y, atol=1e-9)


def test_mirror_branch_identity():
    """method_spec 9.1/10: flipping the symmetrized HT along kx == HT of the image mirrored about the centre pixel
    (flip, then roll by +1 column); and diag(-1,1,-1) R reproduces the branch-0 slice with kx negated."""
    lat = Lattice(D, dtype=torch.float64)
    x = _img()
    y = symmetrize_ht(ht2_center(x)).reshape(3, -1)
    mirrored = torch.roll(torch.flip(x, dims=(-1,)), 1, dims=-1)
    ref = symmetrize_ht(ht2_center(mirrored)).reshape(3, -1)
    assert torch.allclose(y[:, lat.flipx_index], ref, atol=1e-9)
    # the naive flip is off by one pixel
    naive = symmetrize_ht(ht2_center(torch.flip(x, dims=(-1,)))).reshape(3, -1)
    assert not torch.allclose(y[:, lat.flipx_index], naive, atol=1e-3)
    rot = random_rotations(4, torch.Generator().manual_seed(1), dtype=torch.float64)
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(lat.coords[lat.flipx_index] @ (flip @ rot), lat.coords @ rot, atol=1e-12)


# ---------------------------------------------------------------- CTF
def test_ctf_even_and_dc():
    lat = Lattice(D, dtype=torch.float64)
    params = dict(apix=1.5, dfu=torch.tensor([15000.0, 20000.0]), dfv=torch.tensor([14000.0, 20500.0]),
                  dfang_deg=torch.tensor([30.0, -70.0]), kv=300.0, cs_mm=2.7, w=torch.tensor([0.1, 0.07]),
                  phase_deg=0.0)
    c = compute_ctf(lat.freqs2d, **params)
    assert c.shape == (2, lat.Dl ** 2)
    assert torch.allclose(c, c[:, lat.neg_index])
    assert torch.allclose(c[:, lat.dc_index], -torch.tensor([0.1, 0.07], dtype=torch.float64))
    assert c.abs().max() <= 1 + 1e-12
    # B-factor envelope
    cb = compute_ctf(lat.freqs2d, **params, bfactor=100.0)
    s2 = (lat.freqs2d ** 2).sum(-1) / 1.5 ** 2
    assert torch.allclose(cb, c * torch.exp(-100.0 * s2 / 4))
    # cryoDRGN rows: [D, apix, dfU, dfV, dfang, kV, Cs, w, phase]; pixel size rescaled to the image box
    rows = torch.tensor([[2 * D, 0.75, 15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, 0.0],
                         [2 * D, 0.75, 20000.0, 20500.0, -70.0, 300.0, 2.7, 0.07, 0.0]], dtype=torch.float64)
    assert torch.allclose(ctf_from_params(lat.freqs2d, rows, D_img=D), c)


def test_ctf_phase_plate_and_zero_defocus():
    f = torch.tensor([[0.0, 0.0], [0.1, 0.0]], dtype=torch.float64)
    c = compute_ctf(f, 1.0, 0.0, 0.0, 0.0, 300.0, 0.0, 0.0, 90.0)
    # gamma = -pi/2 everywhere: C = sin(-pi/2) = -1
    assert torch.allclose(c, -torch.ones_like(c))


def test_ctf_astigmatism_axis():
    """dfU acts along the direction at dfang from +kx towards +ky."""
    ang = 30.0
    u = torch.tensor([[math.cos(math.radians(ang)), math.sin(math.radians(ang))]], dtype=torch.float64) * 0.2
    v = torch.tensor([[-math.sin(math.radians(ang)), math.cos(math.radians(ang))]], dtype=torch.float64) * 0.2
    c_u = compute_ctf(u, 1.0, 10000.0, 20000.0, ang, 300.0, 0.0, 0.0)
    c_u_ref = compute_ctf(u, 1.0, 10000.0, 10000.0, 0.0, 300.0, 0.0, 0.0)
    c_v = compute_ctf(v, 1.0, 10000.0, 20000.0, ang, 300.0, 0.0, 0.0)
    c_v_ref = compute_ctf(v, 1.0, 20000.0, 20000.0, 0.0, 300.0, 0.0, 0.0)
    assert torch.allclose(c_u, c_u_ref) and torch.allclose(c_v, c_v_ref)


# ---------------------------------------------------------------- rotations
def test_r6_round_trip_and_gram_schmidt():
    rot = random_rotations(50, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(r6_to_matrix(matrix_to_r6(rot)), rot, atol=1e-12)
    r6 = torch.randn(50, 6, dtype=torch.float64)
    m = r6_to_matrix(r6)
    assert torch.allclose(m @ m.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(m), torch.ones(50, dtype=torch.float64))
    assert torch.allclose(m[:, 0], r6[:, :3] / r6[:, :3].norm(dim=-1, keepdim=True))
    assert torch.allclose(m[:, 2], torch.cross(m[:, 0], m[:, 1], dim=-1))
    # degenerate input stays finite (norm clamp), gradients too
    z = torch.zeros(1, 6, requires_grad=True)
    out = r6_to_matrix(z)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


def test_quaternions_match_scipy():
    q = torch.randn(20, 4, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    ref = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()
    m = quaternion_to_matrix(q)
    assert np.allclose(m.numpy(), ref, atol=1e-12)
    q2 = matrix_to_quaternion(m)
    q_pos = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(q2, q_pos, atol=1e-10)
    # near-180 degree rotations (w ~ 0) too
    r180 = torch.tensor(Rotation.from_rotvec([[math.pi, 0, 0], [0, math.pi * 0.999, 0.01]]).as_matrix())
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(r180)), r180, atol=1e-10)


def test_random_rotations_uniform():
    rot = random_rotations(20000, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(20000, dtype=torch.float64))
    assert rot.mean(0).abs().max() < 0.03  # Haar measure: E[R] = 0
    ang = geodesic_angle(rot, torch.eye(3, dtype=torch.float64).expand_as(rot), degrees=False)
    for th in (0.5, 1.0, 2.0, 2.8):  # CDF of the rotation angle under Haar measure: (th - sin th) / pi
        assert abs((ang <= th).double().mean().item() - (th - math.sin(th)) / math.pi) < 0.015
    # viewing directions (third rows) uniform on the sphere: each coordinate uniform in [-1, 1]
    z = rot[:, 2, 2]
    assert abs((z < 0.5).double().mean().item() - 0.75) < 0.015


def test_relion_euler_matches_scipy_and_round_trips():
    g = np.random.default_rng(4)
    eul = np.stack([g.uniform(-180, 180, 30), g.uniform(0, 180, 30), g.uniform(-180, 180, 30)], 1)
    rot = euler_relion_to_matrix(*torch.tensor(eul).unbind(1))
    ref = Rotation.from_euler("ZYZ", eul, degrees=True).as_matrix().transpose(0, 2, 1)
    assert np.allclose(rot.numpy(), ref, atol=1e-12)
    back = matrix_to_euler_relion(rot)
    assert np.allclose(back.numpy(), eul, atol=1e-8)
    # gimbal lock: tilt = 0
    r0 = euler_relion_to_matrix(torch.tensor([40.0]), torch.tensor([0.0]), torch.tensor([25.0]))
    assert torch.allclose(euler_relion_to_matrix(*matrix_to_euler_relion(r0).unbind(-1)), r0, atol=1e-10)


def test_rotvec_and_geodesic():
    v = torch.randn(10, 3, dtype=torch.float64)
    v[0] = 1e-9
    ref = Rotation.from_rotvec(v.numpy()).as_matrix()
    m = rotvec_to_matrix(v)
    assert np.allclose(m.numpy(), ref, atol=1e-12)
    ang = geodesic_angle(m, torch.eye(3, dtype=torch.float64).expand_as(m))
    assert np.allclose(ang.numpy(), np.degrees(Rotation.from_rotvec(v.numpy()).magnitude()), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype):
    lat = Lattice(8, dtype=dtype)
    assert lat.coords.dtype == dtype
    assert compute_ctf(lat.freqs2d, 1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 0.1).dtype == dtype
    assert r6_to_matrix(torch.randn(2, 6, dtype=dtype)).dtype == dtype
    assert random_rotations(2, dtype=dtype).dtype == dtype
