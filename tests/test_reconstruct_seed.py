"""End-to-end ab initio seeding on a tiny problem (cryofire_app.reconstruct.seed_abinit).

1,000 images of box 32 from the bundled 70S ribosome map and a second state with a large lump removed (70/30), random
CTF, shifts up to 1.5 px, SNR 5, from scratch. Thresholds: the final local step is ~0.5 degree and the search runs
at box 32 where one Fourier pixel at the particle radius (~12 px) subtends ~5 degrees, so a correct solution is
well below 5 degrees median view error after alignment; a wrong basin (or a convention slip between the search and
the projector) stays at 40-90 degrees. The consensus map, aligned to the truth in the found hand, must correlate with
it, and the states must separate.
"""
from __future__ import annotations

import numpy as np
import torch

from cryofire_app.analysis import metrics
from cryofire_app.reconstruct import SeedConfig, SeedEvent, seed_abinit
from test_reconstruct_conventions import ribosome, simulate


def two_states(d: int):
    vol = ribosome(d)
    ax = torch.arange(d, dtype=torch.float32) - d // 2
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    # remove a ball (radius d/5) around the densest off-centre point: a missing subunit
    r = torch.sqrt(xx ** 2 + yy ** 2 + zz ** 2)
    score = torch.where(r > d / 5, vol, torch.full_like(vol, -1e9))
    i = int(score.argmax())
    c = torch.tensor(np.unravel_index(i, vol.shape), dtype=torch.float32) - d // 2
    ball = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= (d / 5) ** 2
    return vol, vol * (~ball)


def test_seed_abinit_tiny_problem():
    torch.set_num_threads(1)
    d, n0, n1 = 32, 700, 300
    v0, v1 = two_states(d)
    img0, ctf0, rot0, t0 = simulate(v0, n0, max_shift=1.5, seed=3, snr=5.0)
    img1, ctf1, rot1, t1 = simulate(v1, n1, max_shift=1.5, seed=4, snr=5.0)
    img = np.concatenate([img0, img1])
    ctf = np.concatenate([ctf0, ctf1])
    rot = torch.cat([rot0, rot1]).numpy()
    t = torch.cat([t0, t1]).numpy()
    labels = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    cfg = SeedConfig(box_global=16, radius_global=(4.0, 5.0), n_restarts=1, iters_global=10, max_shift_px=1.5,
                     boxes_local=(16, 24, 32), iters_local=2, box_hetero=24, iters_als=4, seed=0)
    events: list[SeedEvent] = []
    res = seed_abinit(img, ctf, cfg, callback=events.append)
    assert res.rot.shape == (1000, 3, 3) and res.trans_px.shape == (1000, 2) and res.volume.shape == (d, d, d)
    assert {e.stage for e in events} >= {"prepare", "abinit", "global", "local", "hetero", "done"}
    err = metrics.rotation_errors(res.rot, rot)
    assert err["rot_view_median_deg"] < 5.0, err
    terr = metrics.translation_errors(res.trans_px, t, rot, correct_global=True)
    assert terr["trans_median_px"] < 0.5, terr
    al = metrics.align_rotations(res.rot, rot)
    aligned = metrics.align_volume_to_gt(res.volume * res.history["density_sign"], al, gt=v0.numpy())
    c = np.corrcoef(aligned.ravel(), v0.numpy().ravel())[0, 1]
    assert c > 0.8, c
    conf = min(np.mean(res.state != labels), np.mean(res.state == labels))
    assert conf < 0.05, conf
    assert res.history["hand"] == "undetermined"


def test_final_maps_do_not_depend_on_the_chunk_size():
    """The seed's final maps are built from the full-lattice data a chunk of particles at a time (memory flat in N):
    any chunk size gives the same consensus and state maps (to float rounding), states with no member are zero."""
    from cryofire_app.reconstruct.data import prepare_particles
    from cryofire_app.reconstruct.seed import _final_maps

    torch.set_num_threads(1)
    d, n = 16, 150
    v0, _ = two_states(d)
    img, ctf, rot, t = simulate(v0, n, max_shift=1.0, seed=5, snr=5.0)
    parts = prepare_particles(img, ctf)
    vol = torch.zeros(d, d, d)
    state = np.r_[np.zeros(90, int), np.ones(60, int)]
    state3 = np.r_[state[:-1], 3]   # states 0, 1, 3 with members; state 2 empty
    cfg = SeedConfig()
    for st in (state, state3):
        one, s1 = _final_maps(parts, rot, t, vol, st, cfg, chunk=10 ** 6)
        many, sm = _final_maps(parts, rot, t, vol, st, cfg, chunk=32)
        assert torch.allclose(one, many, atol=1e-5 * float(one.abs().max()))
        assert s1.shape == (int(st.max()) + 1, d, d, d) and np.allclose(s1, sm, atol=1e-5 * np.abs(s1).max())
    assert not s1[2].any() and s1[3].any()
    assert _final_maps(parts, rot, t, vol, None, cfg)[1] is None
