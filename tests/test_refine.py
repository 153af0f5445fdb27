"""reconstruct.refine: the seed's local search around given poses brings perturbed poses of new particles back to
the truth against a map, and never leaves a particle fitting the map worse."""
from __future__ import annotations

import numpy as np
import torch

from cryofire_app.physics.rotations import geodesic_angle
from cryofire_app.reconstruct.data import prepare_particles, stage_data
from cryofire_app.reconstruct.grids import axis_angle_to_matrix
from cryofire_app.reconstruct.refine import refine_poses
from cryofire_app.reconstruct.search import backproject
from cryofire_app.reconstruct.volume import HartleyAccumulator
from test_hetero import BOX, _simulate


def _map(images, ctf, rot, trans):
    parts = prepare_particles(images, ctf)
    data = stage_data(parts, BOX, BOX // 2)
    acc = HartleyAccumulator(BOX)
    backproject(acc, data, torch.as_tensor(rot, dtype=torch.float32), torch.as_tensor(trans, dtype=torch.float32))
    vol, _ = acc.solve(float(data.Y.var()), mask_radius=0.9 * BOX / 2)
    return vol.numpy(), parts.scale


def test_perturbed_poses_of_new_particles_return_to_the_truth(tmp_path, fixtures_dir):
    from cryofire_app.simulate import HingeConfig

    images, ctf, rot, trans, _, _ = _simulate(tmp_path / "map", fixtures_dir, 1000, HingeConfig(), snr=1.0)
    vol, scale = _map(images, ctf, rot, trans)
    new, ctf_new, rot_new, trans_new, _, _ = _simulate(tmp_path / "new", fixtures_dir, 200, HingeConfig(), snr=1.0,
                                                       seed=3)
    gen = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(200, 3, generator=gen), dim=1)
    kick = axis_angle_to_matrix(axis * np.radians(6.0)).numpy()   # every pose 6 deg off, shifts 1.4 px off
    start = np.einsum("nij,njk->nik", kick, rot_new).astype(np.float32)
    start_t = (trans_new + 1.0).astype(np.float32)
    r, t = refine_poses(lambda rows: new[rows], 200, ctf_new, start, start_t, vol, scale, BOX, 0.67 * BOX / 2,
                        chunk=64)
    before = geodesic_angle(torch.as_tensor(start, dtype=torch.float64), torch.as_tensor(rot_new, dtype=torch.float64))
    after = geodesic_angle(torch.as_tensor(r, dtype=torch.float64), torch.as_tensor(rot_new, dtype=torch.float64))
    assert float(before.median()) > 5.5 and float(after.median()) < 2.5, (float(before.median()), float(after.median()))
    assert np.median(np.abs(t - trans_new)) < 0.5
