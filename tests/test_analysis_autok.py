"""analysis.latent.choose_k (`cryofire analyze -k auto`) on synthetic z: separated Gaussian states give their number,
a single blob and continua (a uniform line, an arc: a hinge motion) give k = 1, a tiny outlier clump is not a state.
"""
from __future__ import annotations

import numpy as np
import pytest

from cryofire_app.analysis.latent import AUTO_K_RULE, choose_k

D = 8


def _noise(rng, n, s=1.0):
    return rng.normal(size=(n, D)) * s


def test_three_well_separated_gaussians_give_three():
    rng = np.random.default_rng(0)
    c = np.zeros((3, D))
    c[1, 0] = c[2, 1] = 7.0
    lab = rng.choice(3, 3000, p=[0.5, 0.3, 0.2])
    ch = choose_k(_noise(rng, 3000) + c[lab])
    assert ch.k == 3 and ch.n_components == 3
    np.testing.assert_allclose(ch.fractions, [0.5, 0.3, 0.2], atol=0.03)   # group 0 = the largest
    assert "3 groups" in ch.reason
    d = ch.to_dict()
    assert d["k"] == 3 and d["rule"] == AUTO_K_RULE and len(d["bic"]) == 8 and d["pcs_used"] == 4


def test_one_gaussian_blob_gives_one():
    rng = np.random.default_rng(1)
    ch = choose_k(_noise(rng, 3000) * np.array([3, 2, 1, 1, 0.5, 0.5, 0.3, 0.3]))
    assert ch.k == 1 and ch.n_components == 1 and "one population" in ch.reason


@pytest.mark.parametrize("shape", ["line", "arc"])
def test_continua_give_one_although_the_bic_splits_them(shape):
    """A uniform 1-D line (and a 270-degree arc) in 8-D: the BIC needs several Gaussians, the density has no valley
    between them: k = 1, the documented answer for a continuum."""
    rng = np.random.default_rng(2)
    z = _noise(rng, 4000, 0.3)
    if shape == "line":
        z[:, 0] += rng.uniform(-5, 5, len(z))
    else:
        a = rng.uniform(0, 1.5 * np.pi, len(z))
        z[:, 0] += 5 * np.cos(a)
        z[:, 1] += 5 * np.sin(a)
    ch = choose_k(z)
    assert ch.n_components > 1 and ch.k == 1
    assert "no valley" in ch.reason and "continuous" in ch.reason


def test_unequal_pair_far_apart_is_two_and_a_tiny_clump_is_no_state():
    rng = np.random.default_rng(3)
    c = np.zeros((2, D))
    c[1, 0] = 6.0
    z = _noise(rng, 3000) + c[rng.choice(2, 3000, p=[0.9, 0.1])]
    ch = choose_k(z)
    assert ch.k == 2 and ch.fractions[1] == pytest.approx(0.1, abs=0.02)
    # 1.5 % of the particles far away: below the 3 % a state needs, it joins a group
    z2 = np.r_[z, _noise(rng, 45, 0.2) + 25.0]
    assert choose_k(z2).k == 2


def test_degenerate_inputs_and_determinism():
    assert choose_k(np.zeros((500, 4))).k == 1                       # a run still in its pose-only phase
    assert "too few" in choose_k(np.random.default_rng(0).normal(size=(30, 2))).reason
    rng = np.random.default_rng(4)
    z = np.r_[_noise(rng, 400), _noise(rng, 400) + 8.0]
    a, b = choose_k(z, seed=5), choose_k(z, seed=5)
    assert a.k == b.k == 2 and a.bic == b.bic
    # more particles than the subset: the answer comes from 5,000 of them
    big = np.r_[_noise(rng, 4000), _noise(rng, 4000) + 8.0]
    ch = choose_k(big)
    assert ch.k == 2 and ch.n_points == 5000
    # zdim 1 and 2: fewer principal components
    assert choose_k(z[:, :1]).n_pcs == 1 and choose_k(z[:, :2]).n_pcs == 2
