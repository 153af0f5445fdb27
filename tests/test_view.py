"""The view encoder's canonical frame (model.view), against the Fourier projector."""
import math

import torch

from cryofire_app.model.view import ViewEncoder, canonical_angle, canonicalise
from cryofire_app.physics.inplane import inplane_matrix, rotate_images, rotate_poses
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.projector import FourierProjector
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.reconstruct.grids import frames_from_directions
from tests.test_inplane import _render
from tests.volumes import blob_volume


def _rel(a, b):
    return ((a - b) ** 2).sum((1, 2)) / (b ** 2).sum((1, 2))


def test_canonicalised_image_is_the_centred_image_at_the_canonical_pose():
    D = 48
    g = torch.Generator().manual_seed(5)
    vol = torch.as_tensor(blob_volume(D, seed=2, n_blobs=10), dtype=torch.float32)
    proj, lat = FourierProjector(vol, pad=2), Lattice(D)
    rot = random_rotations(6, generator=g)
    trans = (torch.rand(6, 2, generator=g) * 2 - 1) * 3
    a = canonical_angle(rot)
    x = canonicalise(_render(proj, lat, D, rot, trans), a, trans)
    rot_c = inplane_matrix(a) @ rot
    # the canonical pose: the view unchanged, the image x axis on the grid frame's e1 (psi 0) of that view
    e1 = frames_from_directions(rot[:, 2].double(), torch.zeros(1, dtype=torch.float64))[:, 0, 0].float()
    assert torch.allclose(rot_c[:, 0], e1, atol=1e-5) and torch.allclose(rot_c[:, 2], rot[:, 2], atol=1e-6)
    right = _render(proj, lat, D, rot_c, torch.zeros(6, 2))
    assert _rel(x, right).max() < 0.005, _rel(x, right)   # bilinear resampling only
    # the shift is undone, not doubled, and the angle is the one that reaches the frame (17 deg off is far off)
    assert _rel(canonicalise(_render(proj, lat, D, rot, trans), a, -trans), right).min() > 0.05
    assert _rel(canonicalise(_render(proj, lat, D, rot, trans), a + 0.3, trans), right).min() > 0.05


def test_view_encoder_refine_turns_its_answer_back_and_keeps_the_view_frame():
    """Whatever the network's weights, refine() answers in the image's own frame: an image turned by any angle with
    its pose turned alike is canonicalised to the same image, so the refined pose turns alike."""
    torch.manual_seed(0)
    D = 32
    ve = ViewEncoder(D, dirs=64, channels=(8, 16), hidden=32, stem="unshuffle", box=None).eval()
    g = torch.Generator().manual_seed(1)
    vol = torch.as_tensor(blob_volume(D, seed=3, n_blobs=8), dtype=torch.float32)
    proj, lat = FourierProjector(vol, pad=2), Lattice(D)
    rot = random_rotations(4, generator=g)
    trans = torch.zeros(4, 2)
    x = _render(proj, lat, D, rot, trans)
    q = torch.full((4,), math.pi / 2)          # a quarter turn: exact on the pixel grid
    x_q = rotate_images(x, q)
    rot_q, trans_q = rotate_poses(rot, trans, q)
    with torch.no_grad():
        r = ve.refine(x, rot, trans)
        r_q = ve.refine(x_q, rot_q, trans_q)
    assert torch.allclose(r_q, inplane_matrix(q) @ r, atol=1e-3)
    assert torch.allclose(torch.linalg.det(r), torch.ones(4), atol=1e-4)


def test_runs_saved_before_the_view_encoder_load_without_one():
    """Configs saved before the field existed (and the paper's amortized schedule) build no view encoder, so their
    checkpoints load and resume as they were; the seeded default builds one of 1,024 directions."""
    from cryofire_app.training.build import build_model
    from cryofire_app.training.config import TrainConfig

    cfg = TrainConfig.of(particles="", outdir="", schedule="seeded")
    new = build_model(cfg, 32)
    assert new.view is not None and new.view.dirs == 1024
    assert any(k.startswith("view.") for k in new.state_dict())
    d = cfg.to_dict()
    del d["encoder"]["view_dirs"]
    old = TrainConfig.from_dict(d)
    assert old.encoder.view_dirs == 0 and build_model(old, 32).view is None
    assert not any(k.startswith("view.") for k in build_model(old, 32).state_dict())
    assert build_model(TrainConfig.of(particles="", outdir="", schedule="amortized"), 32).view is None
