"""Pseudo-symmetry and ambiguous poses in the self-diagnosis (cryofire_app.reconstruct.symmetry, diagnose.verdict).

A molecule made two-fold by construction (the 70S map of ../shared/fixtures plus its copy turned 180 degrees about a
known axis through the box centre): the map search finds that rotation, and held-out particles simulated from it fit
their true pose and its mate equally well, so the verdict is "uncertain" and says why. The 70S map alone has no
such symmetry; that its true poses stay "converged" with no reason is test_diagnose.py's check."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryofire_app.reconstruct.diagnose import DiagnoseConfig, Diagnosis, diagnose, verdict
from cryofire_app.reconstruct.symmetry import _low_pass_crop, find_symmetry, rotate_about, rotation_axis

pytestmark = pytest.mark.usefixtures("one_thread")

AXIS = np.array([0.6, 0.0, 0.8])


def _two_fold() -> torch.Tensor:
    a = torch.as_tensor(AXIS * math.pi, dtype=torch.float64)
    from cryofire_app.reconstruct.grids import axis_angle_to_matrix

    return axis_angle_to_matrix(a).float()


@pytest.fixture(scope="module")
def maps(request):
    from cryofire_app.io import read_map

    fx = request.getfixturevalue("fixtures_dir")
    v = read_map(fx / "aspire" / "clean70SRibosome_vol_65p.mrc")[0].astype(np.float32)[:64, :64, :64]
    v = _low_pass_crop(torch.as_tensor(v), 16.0, 32)
    sym = v + rotate_about(v, _two_fold()[None], torch.zeros(3))[0]
    return v.numpy(), sym.numpy()


def test_the_map_search_finds_a_built_in_two_fold_and_no_symmetry_in_the_70s(maps):
    rng = np.random.default_rng(0)
    v, sym = maps
    for vol, symmetric in ((sym, True), (v, False)):
        s = 0.3 * vol.std()
        h1, h2 = (vol + s * rng.standard_normal(vol.shape).astype(np.float32) for _ in range(2))
        out = find_symmetry(h1, h2, band_radius=10.0, mask_radius=14.0)
        assert 0.8 < out.half_corr < 1.0
        if symmetric:
            assert abs(out.angle_deg - 180) < 5 and abs(float(np.dot(out.axis, AXIS))) > 0.98, out
            assert out.fraction > 0.9, out
        else:
            assert out.fraction is None or out.fraction < 0.5, out
    assert np.allclose(rotation_axis(_two_fold().double().numpy()), AXIS, atol=1e-5)


def test_a_two_fold_molecule_makes_the_poses_ambiguous_and_the_verdict_says_so(maps, tmp_path):
    from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl, write_mrc
    from cryofire_app.simulate import SimulationConfig, simulate

    _, sym = maps
    write_mrc(tmp_path / "c2.mrc", sym, apix=10.0)
    out = tmp_path / "sim"
    simulate(SimulationConfig(outdir=str(out), n=700, maps=[str(tmp_path / "c2.mrc")], apix=10.0, box=32, snr=0.3,
                              max_shift_px=1.0, seed=5, progress=False))
    rot, trans = read_pose_pkl(out / "poses.pkl")
    ho = np.zeros(len(rot), bool)
    ho[np.random.default_rng(2).permutation(len(rot))[:150]] = True
    diag = diagnose(read_mrc(out / "particles.mrcs")[0], read_ctf_pkl(out / "ctf.pkl"), rot, trans * 32,
                    apix=10.0, heldout=ho, config=DiagnoseConfig(n_score=150, grid_dirs=96, grid_psi=16))
    print(f"\ntwo-fold 70S, true poses: symmetry {diag.symmetry_angle_deg:.1f} deg, fraction "
          f"{diag.symmetry_fraction:.2f}; ambiguous {diag.ambiguous_fraction:.2f} (z median "
          f"{diag.second_mode_z_median:.2f}), at the symmetry {diag.second_mode_at_symmetry:.2f}")
    # the decisive check passes (a real map, real poses) ...
    assert diag.signal_ratio > 1.3 and diag.signal_z > 8, diag
    # ... but the particles cannot tell a pose from its mate under the two-fold
    assert abs(diag.symmetry_angle_deg - 180) < 6 and abs(float(np.dot(diag.symmetry_axis, AXIS))) > 0.97, diag
    assert diag.ambiguous_fraction > 0.6 and diag.second_mode_at_symmetry > 0.7, diag
    level, reasons = verdict(diag)
    assert level == "uncertain" and len(reasons) == 1, reasons
    assert "nearly symmetric under a 180 deg rotation" in reasons[0] and "impose the symmetry" in reasons[0]


def _diag(**kw) -> Diagnosis:
    base = dict(n_particles=900, n_heldout=100, box=32, apix=5.0, band_radius_px=8.0, signal_ratio=1.8, signal_z=30.0,
                heldout_gain_median=0.95, heldout_agreement=0.9, halves_gain_median=1.0, halves_agreement=0.9,
                agreement_chance=0.01, fsc_half_0143_px=3.0, fsc_half_05_px=4.0, fsc_curve=[1.0, 0.5])
    base.update(kw)
    return Diagnosis(**base)


def test_verdict_wording_of_ambiguous_poses():
    # no ambiguity measured (older reports, no held-out particles) or a small fraction: unchanged
    assert verdict(_diag()) == ("converged", [])
    assert verdict(_diag(ambiguous_fraction=0.05, second_mode_z_median=9.0, symmetry_angle_deg=180.0,
                         symmetry_axis=[1.0, 0.0, 0.0], symmetry_fraction=0.7, second_mode_at_symmetry=0.9)) == (
        "converged", [])
    # ambiguous, not explained by the map's symmetry: two orientations, their separation
    level, reasons = verdict(_diag(ambiguous_fraction=0.83, second_mode_z_median=0.7, second_mode_separation_deg=113.0,
                                   symmetry_angle_deg=179.5, symmetry_axis=[0.97, -0.24, 0.0], symmetry_fraction=0.70,
                                   second_mode_at_symmetry=0.1))
    assert level == "uncertain" and len(reasons) == 1
    assert reasons[0].startswith("83 % of the held-out particles fit two orientations about 113 deg apart")
    assert "state split" in reasons[0] and "symmetric" not in reasons[0]
    # ambiguous at the map's symmetry: named, with its axis
    level, reasons = verdict(_diag(ambiguous_fraction=0.9, second_mode_separation_deg=179.0, symmetry_angle_deg=179.6,
                                   symmetry_axis=[0.6, 0.0, 0.8], symmetry_fraction=0.98, second_mode_at_symmetry=0.95))
    assert level == "uncertain"
    assert "180 deg rotation about the axis (0.60, 0.00, 0.80)" in reasons[0] and "98 %" in reasons[0]
    # a failed run stays failed, whatever the ambiguity
    assert verdict(_diag(signal_ratio=1.0, signal_z=1.0, ambiguous_fraction=1.0))[0] == "failed"
