"""In-plane rotation of images and the matching pose change, against the Fourier projector."""
import math

import torch

from cryofire_app.physics.inplane import inplane_matrix, rotate_images, rotate_poses
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.projector import FourierProjector, lattice_to_image
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.physics.shift import translate_ht
from tests.volumes import blob_volume


def _render(proj, lat, D, rot, trans):
    y = proj.slice(rot)
    y = translate_ht(y, y[:, lat.neg_index], lat.freqs2d, -trans)
    return lattice_to_image(y, D)


def test_rotated_image_is_the_image_at_the_rotated_pose():
    D = 48
    g = torch.Generator().manual_seed(3)
    vol = torch.as_tensor(blob_volume(D, seed=4, n_blobs=10), dtype=torch.float32)
    proj, lat = FourierProjector(vol, pad=2), Lattice(D)
    rot = random_rotations(4, generator=g)
    trans = (torch.rand(4, 2, generator=g) * 2 - 1) * 3
    ang = torch.tensor([0.3, 1.9, -2.5, math.pi / 2])
    x = rotate_images(_render(proj, lat, D, rot, trans), ang)
    rot2, trans2 = rotate_poses(rot, trans, ang)
    right = _render(proj, lat, D, rot2, trans2)
    rel = ((x - right) ** 2).sum((1, 2)) / (right ** 2).sum((1, 2))
    assert rel.max() < 0.005, rel   # ~5e-4 (bilinear resampling)
    # the other sign of the angle (or of the shift) is far off: the convention is pinned, not just "a rotation"
    rot3, trans3 = rotate_poses(rot, trans, -ang)
    wrong = _render(proj, lat, D, rot3, trans3)
    assert (((x - wrong) ** 2).sum((1, 2)) / (wrong ** 2).sum((1, 2))).min() > 0.3
    wrong_t = _render(proj, lat, D, rot2, torch.einsum("bij,bj->bi", inplane_matrix(-ang)[:, :2, :2], trans))
    assert (((x - wrong_t) ** 2).sum((1, 2)) / (wrong_t ** 2).sum((1, 2))).min() > 0.1


def test_quarter_turn_is_exact_and_inverse_undoes():
    x = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(0))
    q = rotate_images(x, torch.full((2,), math.pi / 2))
    # content at (x, y) = (col, row) offset moves to (-y, x): pixel [r, c] -> [D//2 + (c - D//2), D//2 - (r - D//2)]
    D = 32
    r, c = 20, 9
    assert torch.allclose(q[:, D // 2 + (c - D // 2), D // 2 - (r - D // 2)], x[:, r, c], atol=1e-5)
    rot = random_rotations(2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    a = torch.tensor([0.4, -1.2])
    r2, t2 = rotate_poses(*rotate_poses(rot, t, a), a, inverse=True)
    assert torch.allclose(r2, rot, atol=1e-6) and torch.allclose(t2, t, atol=1e-6)
    assert torch.allclose(torch.linalg.det(inplane_matrix(a)), torch.ones(2))


def test_pose_averaged_over_turns_is_equivariant_for_any_encoder():
    """encode_with_turns(K=4) of an image turned by a quarter turn is the quarter-turned answer for the image itself
    (the 4 turned copies are the same set), whatever the encoder's weights; and the chordal mean of equal rotations
    is that rotation."""
    from cryofire_app.model import CryoFIRE
    from cryofire_app.physics.fft import window_mask
    from cryofire_app.physics.rotations import chordal_mean
    from cryofire_app.training.inference import encode_with_turns

    torch.manual_seed(0)
    model = CryoFIRE(32, zdim=2, encoder_kwargs=dict(channels=(8, 16), hidden=32)).eval()
    x = torch.randn(3, 32, 32) * window_mask(32)
    q = torch.full((3,), math.pi / 2)
    with torch.no_grad():
        a = encode_with_turns(model, x, 4)
        b = encode_with_turns(model, rotate_images(x, q), 4)
    rot_a, t_a = rotate_poses(a["rot"], a["trans"], q)
    assert torch.allclose(b["rot"], rot_a, atol=1e-4) and torch.allclose(b["trans"], t_a, atol=1e-4)
    assert torch.allclose(torch.linalg.det(a["rot"]), torch.ones(3), atol=1e-5)
    r = random_rotations(5, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(chordal_mean(r[:, None].expand(5, 3, 3, 3)), r, atol=1e-5)
