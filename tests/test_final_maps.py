"""The final explicit reconstruction (cryofire_app.reconstruct.final) on a simulated two-state set of the 70S map
(../shared/fixtures), box 32, 1,200 images, SNR 0.3, at the true poses: the map matches the truth far beyond the
decoder's band, streaming in chunks changes nothing, per-state maps match their own state, and random poses give
a map that matches the truth only in its round envelope."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_app.analysis import metrics
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.reconstruct.final import final_maps
from volumes import simulate_70s

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim(tmp_path_factory, request):
    return simulate_70s(tmp_path_factory.mktemp("final"), request.getfixturevalue("fixtures_dir"), n=1200, snr=0.3,
                        seed=5)


def test_true_poses_give_the_truth_and_chunks_do_not_matter(sim):
    read = lambda rows: sim["images"][rows]   # noqa: E731
    fm = final_maps(read, len(sim["rot"]), sim["ctf"], sim["rot"], sim["trans"], state=sim["labels"], chunk=500)
    # the simulator's images are white on black (RELION sign): the map is negative density
    res = metrics.fsc_report(-fm.volume, sim["gt"][0])
    assert res["res_0.5_px"] < 3.0, res["res_0.5_px"]          # Nyquist is 2 px
    assert fm.res_0143_px < 2.5 and fm.n_particles == 1200
    again = final_maps(read, len(sim["rot"]), sim["ctf"], sim["rot"], sim["trans"], chunk=170)
    assert np.corrcoef(again.volume.ravel(), fm.volume.ravel())[0, 1] > 0.999
    own = [np.corrcoef(-fm.state_volumes[k].ravel(), sim["gt"][k].ravel())[0, 1] for k in (0, 1)]
    other = [np.corrcoef(-fm.state_volumes[k].ravel(), sim["gt"][1 - k].ravel())[0, 1] for k in (0, 1)]
    assert own[0] > other[0] and own[1] > other[1], (own, other)


def test_random_poses_give_no_resolution(sim):
    rand = random_rotations(len(sim["rot"])).numpy()
    fm = final_maps(lambda rows: sim["images"][rows], len(rand), sim["ctf"], rand, sim["trans"])
    res = metrics.fsc_report(-fm.volume, sim["gt"][0])
    assert res["res_0.5_px"] >= 8.0, res["res_0.5_px"]      # the round envelope only (true poses: < 3 px)


def test_states_beyond_the_accumulator_budget_take_more_passes_and_give_the_same_maps(sim, monkeypatch):
    """With room for only two accumulators per pass, the halves take one pass and three states two more: every map
    is the same as with all sums held at once (the same images summed in the same order)."""
    from cryofire_app.reconstruct import final, seed_stages
    from cryofire_app.reconstruct.data import prepare_particles
    from cryofire_app.reconstruct.seed import SeedConfig

    n = 600
    read = lambda rows: sim["images"][:n][rows]   # noqa: E731
    st = np.random.default_rng(0).integers(0, 3, n)
    args = (read, n, sim["ctf"][:n], sim["rot"][:n], sim["trans"][:n])
    parts = prepare_particles(sim["images"][:n], sim["ctf"][:n])
    rot, trans = (torch.as_tensor(np.asarray(a[:n], np.float32)) for a in (sim["rot"], sim["trans"]))
    vol = torch.as_tensor(-sim["gt"][0], dtype=torch.float32)

    def maps():
        return final.final_maps(*args, state=st), seed_stages._final_maps(parts, rot, trans, vol, st, SeedConfig())

    assert final.accumulators_per_pass(32) > 3
    once, seed_once = maps()
    monkeypatch.setattr(final, "ACCUMULATOR_BUDGET_BYTES", 1)
    assert final.accumulators_per_pass(32) == 2
    passes, seed_passes = maps()
    for a, b in ((once.volume, passes.volume), (once.half1, passes.half1), (once.state_volumes, passes.state_volumes),
                 (seed_once[0].numpy(), seed_passes[0].numpy()), (seed_once[1], seed_passes[1])):
        np.testing.assert_array_equal(a, b)
    assert once.state_volumes.shape[0] == 3 and seed_once[1].shape[0] == 3
