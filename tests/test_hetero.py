"""The seed's heterogeneity step (reconstruct.hetero) at the true poses of small 70S simulations: a continuous hinge
gives one state and a coordinate that follows the hinge angle, K = 3 hinge states give three states, no motion gives
no reproducible direction, and forced states are honoured."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cryofire_app.analysis.metrics import label_confusion
from cryofire_app.reconstruct.data import prepare_particles, stage_data
from cryofire_app.reconstruct.hetero import HeteroConfig, analyse
from cryofire_app.reconstruct.search import backproject
from cryofire_app.reconstruct.volume import HartleyAccumulator

BOX = 32


def _simulate(out, fixtures, n: int, hinge, fractions=None, snr: float = 1.0, seed: int = 0):
    from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl
    from cryofire_app.simulate import SimulationConfig, simulate

    simulate(SimulationConfig(outdir=str(out), n=n, maps=[str(fixtures / "aspire" / "clean70SRibosome_vol_65p.mrc")],
                              apix=5.0, box=BOX, snr=snr, fractions=fractions, max_shift_px=1.5, seed=seed,
                              progress=False, hinge=hinge))
    rot, trans = read_pose_pkl(out / "poses.pkl")
    cont = out / "labels_continuous.npy"
    return (read_mrc(out / "particles.mrcs")[0], read_ctf_pkl(out / "ctf.pkl"), rot, trans * BOX,
            np.load(out / "labels.npy"), np.load(cont) if cont.is_file() else None)


def _analyse(images, ctf, rot, trans, **kw):
    parts = prepare_particles(images, ctf)
    data = stage_data(parts, BOX, 0.67 * BOX / 2)
    R, T = torch.as_tensor(rot, dtype=torch.float32), torch.as_tensor(trans, dtype=torch.float32)
    acc = HartleyAccumulator(BOX)
    backproject(acc, data, R, T)
    vol, _ = acc.solve(float(data.Y.var()), mask_radius=0.9 * BOX / 2)
    return analyse(data, R, T, vol, HeteroConfig(**kw))


def test_continuous_hinge_is_one_state_with_a_coordinate_along_the_angle(tmp_path, fixtures_dir):
    from cryofire_app.simulate import HingeConfig

    images, ctf, rot, trans, _, u = _simulate(tmp_path, fixtures_dir, 1500,
                                              HingeConfig(steps=8, continuous=True, angle_deg=30.0))
    res = _analyse(images, ctf, rot, trans)
    assert res.kind == "continuous" and res.n_states == 1, (res.kind, res.n_states, res.components)
    assert res.coords.shape[1] >= 1
    assert abs(spearmanr(res.coords[:, 0], u)[0]) >= 0.9
    assert res.components[0]["reproducibility"] > 0.8


def test_three_hinge_states_are_found_as_three(tmp_path, fixtures_dir):
    from cryofire_app.simulate import HingeConfig

    images, ctf, rot, trans, labels, _ = _simulate(tmp_path, fixtures_dir, 1500, HingeConfig(steps=3, angle_deg=30.0),
                                                   fractions=(0.5, 0.3, 0.2))
    res = _analyse(images, ctf, rot, trans)
    assert res.kind == "discrete" and res.n_states == 3, (res.kind, res.n_states, res.components)
    assert label_confusion(res.labels, labels)["confusion"] <= 0.03
    sizes = np.bincount(res.labels)
    assert sizes[0] == sizes.max()   # state 0 is the largest


def test_no_motion_has_no_reproducible_direction_unless_states_are_forced(tmp_path, fixtures_dir):
    from cryofire_app.simulate import HingeConfig

    images, ctf, rot, trans, _, _ = _simulate(tmp_path, fixtures_dir, 800, HingeConfig(), snr=0.5)
    res = _analyse(images, ctf, rot, trans, max_components=1)
    assert res.kind == "homogeneous" and res.coords.shape == (800, 0) and res.score is None
    assert abs(res.components[0]["reproducibility"]) < 0.3
    forced = _analyse(images, ctf, rot, trans, max_components=1, n_states=2)
    assert forced.n_states == 2 and forced.coords.shape == (800, 1)


@pytest.mark.parametrize("kw", [dict(max_components=0), dict(max_states=0)])
def test_seed_config_refuses_empty_searches(kw):
    from cryofire_app.reconstruct import SeedConfig

    with pytest.raises(ValueError):
        SeedConfig(**{("hetero_components" if "max_components" in kw else "hetero_max_states"): 0})


def test_new_particles_get_the_coordinates_of_the_seeds_basis(tmp_path, fixtures_dir):
    """The basis the analysis returns gives any particle its coordinate at its pose: the analysed particles' own
    again (from their raw images), and for new particles of the same motion a coordinate that follows the angle."""
    from cryofire_app.reconstruct.coordinates import particle_coordinates
    from cryofire_app.reconstruct.hetero import HeteroBasis
    from cryofire_app.simulate import HingeConfig

    hinge = HingeConfig(steps=8, continuous=True, angle_deg=30.0)
    images, ctf, rot, trans, _, _ = _simulate(tmp_path / "train", fixtures_dir, 1500, hinge)
    new, ctf_new, rot_new, trans_new, _, u_new = _simulate(tmp_path / "new", fixtures_dir, 400, hinge, seed=1)
    parts = prepare_particles(images, ctf)
    res = _analyse(images, ctf, rot, trans)
    basis = res.basis
    assert basis is not None and basis.q == res.coords.shape[1] >= 1 and basis.directions.shape[0] == 2
    basis.data_scale = parts.scale
    basis = HeteroBasis.from_arrays(basis.to_arrays())   # through the .npz form
    again = particle_coordinates(lambda r: images[r], len(images), ctf, rot, trans, basis, chunk=512)
    assert np.abs(again - res.coords).max() < 1e-3
    x = particle_coordinates(lambda r: new[r], len(new), ctf_new, rot_new, trans_new, basis)
    assert abs(spearmanr(x[:, 0], u_new)[0]) >= 0.85
    assert abs(np.median(x[:, 0])) < 0.3 and 0.7 < x[:, 0].std() < 1.3   # standardised as the training coordinates


def test_the_basis_labels_the_analysed_particles_as_the_analysis_did(tmp_path, fixtures_dir):
    """The state mixture saved in the basis gives the analysed particles' own labels back from their coordinates,
    and labels new particles of the same states."""
    from cryofire_app.reconstruct.coordinates import particle_coordinates
    from cryofire_app.reconstruct.hetero import HeteroBasis
    from cryofire_app.simulate import HingeConfig

    hinge = HingeConfig(steps=3, angle_deg=30.0)
    images, ctf, rot, trans, _, _ = _simulate(tmp_path / "train", fixtures_dir, 1500, hinge, fractions=(0.5, 0.3, 0.2))
    new, ctf_new, rot_new, trans_new, labels_new, _ = _simulate(tmp_path / "new", fixtures_dir, 400, hinge,
                                                                fractions=(0.5, 0.3, 0.2), seed=1)
    res = _analyse(images, ctf, rot, trans)
    assert res.n_states == 3 and res.basis.mixture is not None
    res.basis.data_scale = prepare_particles(images, ctf).scale
    basis = HeteroBasis.from_arrays(res.basis.to_arrays())
    assert np.mean(basis.states(res.coords) == res.labels) > 0.99
    x = particle_coordinates(lambda r: new[r], len(new), ctf_new, rot_new, trans_new, basis)
    assert label_confusion(basis.states(x), labels_new)["confusion"] <= 0.05
