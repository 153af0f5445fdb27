"""The encoder's grid rotation head: decoding scores to a rotation, its cross-entropy target, config defaults."""
import math

import pytest
import torch

from cryofire_app.model.cryofire import CryoFIRE
from cryofire_app.model.encoder import Encoder, grid_pose
from cryofire_app.physics.rotations import geodesic_angle, random_rotations
from cryofire_app.training.build import build_model
from cryofire_app.training.config import TrainConfig
from cryofire_app.training.schedule import distill_lr_factor, grid_width_at


def test_grid_pose_resolves_below_the_grid_spacing():
    """Decoding the scores of a perfectly trained head (grid_target_logits, the log of the cross-entropy target)."""
    enc = Encoder(32, zdim=0, rot_head="grid", grid_dirs=512, grid_psi=24)
    rot = random_rotations(300, generator=torch.Generator().manual_seed(0))
    got = grid_pose(enc.grid_target_logits(rot), enc.rot_grid, enc.neighbourhood)
    assert torch.allclose(got @ got.transpose(1, 2), torch.eye(3).expand(300, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(got), torch.ones(300), atol=1e-5)
    err = geodesic_angle(got.double(), rot.double())
    # the grid is 9 deg (views) x 15 deg (in plane); the soft target keeps the sub-grid position: ~0.75 deg
    assert err.median() < 1.5 and err.max() < 4, (err.median(), err.max())
    # argmax alone would be off by up to half a spacing
    top = enc.rot_grid[enc.grid_target_logits(rot).argmax(1)]
    assert geodesic_angle(top.double(), rot.double()).median() > 2 * err.median()


def test_narrowed_target_is_sharper_and_still_decodes_below_the_spacing():
    enc = Encoder(32, zdim=0, rot_head="grid", grid_dirs=512, grid_psi=24)
    rot = random_rotations(300, generator=torch.Generator().manual_seed(4))
    wide, narrow = (torch.softmax(enc.grid_target_logits(rot, w), -1) for w in (1.0, 0.5))
    assert (narrow.max(1).values > 1.5 * wide.max(1).values).all()
    err = geodesic_angle(grid_pose(enc.grid_target_logits(rot, 0.5), enc.rot_grid, enc.neighbourhood).double(),
                         rot.double())
    assert err.median() < 2.5, err.median()     # measured 1.45 deg (0.5 deg in view direction)


def test_distill_target_narrows_over_the_distill_phase():
    cfg = TrainConfig.of(schedule="seeded")            # width 1 -> 0.5 between 1/2 and 3/4 of the distill images
    assert [grid_width_at(cfg, n, 1000) for n in (0, 500, 625, 750, 2000)] == [1.0, 1.0, 0.75, 0.5, 0.5]
    assert grid_width_at(TrainConfig.of(schedule="seeded", distill_grid_width=1.0), 900, 1000) == 1.0
    d = cfg.to_dict()
    del d["seeded"]["distill_grid_width"]                     # a run saved before the narrowing existed keeps its width
    assert TrainConfig.from_dict(d).seeded.distill_grid_width == 1.0


def test_distill_learning_rate_decays_into_the_joint_rate():
    cfg = TrainConfig.of(schedule="seeded")            # 1 until 3/4 of the distill images, cosine to the joint factor
    f = [distill_lr_factor(cfg, n, 1000) for n in (0, 750, 875, 1000, 5000)]
    assert f[:2] == [1.0, 1.0] and f[2] == pytest.approx(0.5 * (1 + cfg.seeded.joint_lr_scale))
    assert f[3] == f[4] == pytest.approx(cfg.seeded.joint_lr_scale)
    assert distill_lr_factor(TrainConfig.of(schedule="seeded", distill_decay_from=1.0), 999, 1000) == 1.0
    d = cfg.to_dict()
    del d["seeded"]["distill_decay_from"]                     # a run saved before the decay keeps a constant rate
    assert TrainConfig.from_dict(d).seeded.distill_decay_from == 1.0


def test_grid_pose_ignores_a_distant_second_mode():
    enc = Encoder(32, zdim=0, rot_head="grid", grid_dirs=512, grid_psi=24)
    rot = random_rotations(2, generator=torch.Generator().manual_seed(1))
    lg = torch.logaddexp(enc.grid_target_logits(rot[:1]), enc.grid_target_logits(rot[1:]) - 0.5)   # rot[0] more likely
    got = grid_pose(lg, enc.rot_grid, enc.neighbourhood)
    assert float(geodesic_angle(got.double(), rot[:1].double())) < 2


def test_grid_loss_is_lowest_at_the_target_and_trains_the_head():
    torch.manual_seed(0)
    enc = Encoder(32, zdim=0, rot_head="grid", grid_dirs=128, grid_psi=12)
    rot = random_rotations(8, generator=torch.Generator().manual_seed(2))
    other = random_rotations(8, generator=torch.Generator().manual_seed(3))
    lg = enc.grid_target_logits(rot)
    assert (enc.grid_loss(lg, rot) < enc.grid_loss(lg, other)).all()
    # a few steps on fixed images move the decoded pose onto the targets (the head is reachable by the loss)
    x = torch.randn(8, 32, 32)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    for _ in range(150):
        out = enc(x)
        loss = enc.grid_loss(out["rot_logits"], rot).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    err = geodesic_angle(enc(x)["rot"].detach().double(), rot.double())
    assert err.median() < 5, err


def test_encode_turned_returns_scores_of_the_turned_images():
    cfg = TrainConfig.of(schedule="seeded", zdim=1)
    model: CryoFIRE = build_model(cfg, 32)
    x = torch.randn(3, 32, 32)
    ang = torch.tensor([0.0, 1.0, 2.0])
    out = model.encode_turned(x, ang)
    assert out["rot_logits"].shape == (3, 512 * 24)
    # turn 0: the scores are those of the image itself
    assert torch.allclose(out["rot_logits"][0], model.encoder(x[:1])["rot_logits"][0], atol=1e-4)


def test_rot_head_defaults():
    assert TrainConfig.of(schedule="seeded").rot_head() == "grid"
    assert TrainConfig.of(schedule="amortized").rot_head() == "r6"   # the paper's schedule keeps the paper's head
    d = TrainConfig.of(schedule="seeded").to_dict()
    del d["encoder"]["rot_head"]   # a run saved before the field existed was trained with the 6D head
    assert TrainConfig.from_dict(d).rot_head() == "r6"
    assert build_model(TrainConfig.of(schedule="amortized"), 32).encoder.rot_kind == "r6"


def test_turn_index_maps_turned_scores_back_onto_the_grid():
    from cryofire_app.physics.inplane import rotate_poses

    enc = Encoder(32, zdim=0, rot_head="grid", grid_dirs=128, grid_psi=12)
    for k in (1, 3, -2, 11):
        a = 2 * math.pi * k / 12
        j = enc.grid_turn_index(a)
        back = rotate_poses(enc.rot_grid, torch.zeros(len(j), 2), torch.full((len(j),), a), inverse=True)[0]
        assert torch.allclose(back, enc.rot_grid[j], atol=1e-5) and len(set(j.tolist())) == len(j)
    assert enc.grid_turn_index(0.3) is None            # not a multiple of the in-plane spacing


def test_fused_turns_and_mirror_are_equivariant_for_any_grid_encoder():
    """The turns' combined score maps and the encoder's own image-or-mirror choice give, for an image turned by a
    quarter turn, the quarter-turned pose, and for the mirrored image the mirror-compensated pose, whatever the
    weights (the turned and mirrored copies are the same sets, their maps are the same up to the grid's symmetry)."""
    from cryofire_app.model.cryofire import compensate_mirror, mirror_images
    from cryofire_app.physics.fft import window_mask
    from cryofire_app.physics.inplane import rotate_images, rotate_poses
    from cryofire_app.training.inference import encode_with_turns

    torch.manual_seed(0)
    model = CryoFIRE(32, zdim=2, encoder_kwargs=dict(channels=(8, 16), hidden=32, rot_head="grid", grid_dirs=128,
                                                     grid_psi=12)).eval()
    with torch.no_grad():   # peaked score maps, as a trained head's (near-flat ones leave ties to float rounding)
        model.encoder.rot_head.weight.mul_(200.0)
    x = torch.randn(6, 32, 32) * window_mask(32)
    q = torch.full((6,), math.pi / 2)
    with torch.no_grad():
        a = encode_with_turns(model, x, 4)
        b = encode_with_turns(model, rotate_images(x, q), 4)
        m = encode_with_turns(model, mirror_images(x), 4)
    # equal up to float rounding at grid_pose's neighbourhood edge (a candidate of ~1 % weight can fall either side)
    rot_q, t_q = rotate_poses(a["rot"], a["trans"], q)
    assert geodesic_angle(b["rot"], rot_q).max() < 0.5 and torch.allclose(b["trans"], t_q, atol=1e-4)
    rot_m, t_m = compensate_mirror(m["rot"], m["trans"])
    assert geodesic_angle(rot_m, a["rot"]).max() < 0.5 and torch.allclose(t_m, a["trans"], atol=1e-4)
    assert torch.equal(b["branch"], a["branch"]) and 0 < a["branch"].sum() < 6   # both candidates are chosen
    assert torch.equal(m["branch"], 1 - a["branch"])       # the same choice, seen from the other side
    assert torch.allclose(torch.linalg.det(a["rot"]), torch.ones(6), atol=1e-5)


def test_the_mirror_wins_when_both_maps_agree_on_it():
    """The image's own map puts a little more weight on a wrong pose W than on the true R; the mirror's map says
    only R (read at diag(-1, 1, -1) R). Together they choose the mirror's answer R; with the roles reversed, the
    image's."""
    from cryofire_app.model.cryofire import compensate_mirror
    from cryofire_app.training.inference import mirror_wins

    enc = Encoder(32, zdim=0, rot_head="grid", grid_dirs=512, grid_psi=24)
    R, W = random_rotations(2, generator=torch.Generator().manual_seed(5)).split(1)
    MR = compensate_mirror(R, torch.zeros(1, 2))[0]
    logp = torch.logaddexp(enc.grid_target_logits(W) + math.log(0.55), enc.grid_target_logits(R) + math.log(0.45))
    logp = torch.log_softmax(logp, -1)
    logp_m = torch.log_softmax(enc.grid_target_logits(MR), -1)
    img = grid_pose(logp, enc.rot_grid, enc.neighbourhood)     # the image alone decodes to W
    assert float(geodesic_angle(img, W)) < 3
    assert bool(mirror_wins(enc, logp, img, logp_m, R))
    assert not bool(mirror_wins(enc, logp_m, MR, logp, compensate_mirror(img, torch.zeros(1, 2))[0]))
