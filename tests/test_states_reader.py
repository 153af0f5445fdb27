"""analysis.states.read_seed_states on hand-written files: the format before issue 20 (K = 2, no coords / kind), the
new one (coords (M, q), kind), K = 1 and K = 3, and malformed coords / kind refused with an InputError naming the
file. No training: these check the reader's contract with the trainer (training/trainer.py writes the file)."""
from __future__ import annotations

import numpy as np
import pytest

from cryofire_app.analysis.states import UNLABELLED, read_seed_states
from cryofire_app.io.errors import InputError

N = 50   # run rows; rows 0..39 classified (training split), 40..49 held out


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _base(K=2, M=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.permutation(M).astype(np.int64)          # file order is not row order
    state = rng.permutation(np.arange(M) % K).astype(np.int64)
    return dict(index=rows, state=state, state_score=rng.normal(size=M).astype(np.float32))


def test_old_format_reads_as_discrete_without_coords(tmp_path):
    a = _base(K=2)
    s = read_seed_states(_write(tmp_path / "s.npz", **a), n_particles=N)
    assert s.n_states == 2 and s.kind == "discrete" and s.coords is None and s.q == 0 and not s.continuous
    assert s.coords_for_rows(N) is None and s.coordinate_for_rows(N) is None
    lab = s.labels_for_rows(N)
    assert np.array_equal(lab[a["index"]], a["state"]) and np.all(lab[40:] == UNLABELLED)


def test_new_format_coords_per_row_with_nan_for_held_out(tmp_path):
    a = _base(K=2)
    coords = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    s = read_seed_states(_write(tmp_path / "s.npz", **a, coords=coords, kind=np.array("discrete")), n_particles=N)
    assert s.kind == "discrete" and s.q == 3 and s.coords.dtype == np.float32
    per_row = s.coords_for_rows(N)
    assert per_row.shape == (N, 3) and per_row.dtype == np.float32
    np.testing.assert_array_equal(per_row[a["index"]], coords)
    assert np.all(np.isnan(per_row[40:]))
    c2 = s.coordinate_for_rows(N, 2)
    np.testing.assert_array_equal(c2[a["index"]], coords[:, 1])
    with pytest.raises(ValueError, match="1..3"):
        s.coordinate_for_rows(N, 4)
    with pytest.raises(InputError, match="the run has 30 particles"):
        s.coords_for_rows(30)


def test_k1_continuous_and_homogeneous(tmp_path):
    a = _base(K=1)
    coords = np.linspace(-2, 2, 40, dtype=np.float32)[:, None]
    s = read_seed_states(_write(tmp_path / "c.npz", **a, coords=coords, kind=np.array("continuous")), n_particles=N)
    assert s.n_states == 1 and s.counts().tolist() == [40] and s.kind == "continuous" and s.continuous
    # without kind: K = 1 with coords is continuous, without coords homogeneous
    s = read_seed_states(_write(tmp_path / "c2.npz", **a, coords=coords))
    assert s.kind == "continuous" and s.continuous
    s = read_seed_states(_write(tmp_path / "h.npz", **a))
    assert s.kind == "homogeneous" and not s.continuous and s.coords is None
    s = read_seed_states(_write(tmp_path / "h2.npz", **a, kind=np.array("homogeneous")))
    assert s.kind == "homogeneous"
    # q = 0: a (M, 0) coords array reads as none
    s = read_seed_states(_write(tmp_path / "h3.npz", **a, coords=np.zeros((40, 0), np.float32),
                                kind=np.array("homogeneous")))
    assert s.coords is None and s.q == 0
    # a bytes kind (np.bytes_) is read as well
    s = read_seed_states(_write(tmp_path / "c3.npz", **a, coords=coords, kind=np.array(b"continuous")))
    assert s.kind == "continuous"


def test_k3_states(tmp_path):
    a = _base(K=3)
    coords = np.random.default_rng(2).normal(size=(40, 2)).astype(np.float64)   # float64 is accepted, read as f32
    s = read_seed_states(_write(tmp_path / "s.npz", **a, coords=coords, kind=np.array("discrete")), n_particles=N)
    assert s.n_states == 3 and s.kind == "discrete" and not s.continuous
    assert s.counts().tolist() == np.bincount(a["state"]).tolist() and s.coords.dtype == np.float32
    for k in range(3):
        assert np.array_equal(s.rows_of(k), a["index"][a["state"] == k])


@pytest.mark.parametrize("extra, problem", [
    (dict(coords=np.zeros(40, np.float32)), "coords must have shape (M, q)"),
    (dict(coords=np.zeros((39, 2), np.float32)), "coords must have shape (M, q)"),
    (dict(coords=np.zeros((40, 2, 1), np.float32)), "coords must have shape (M, q)"),
    (dict(coords=np.zeros((40, 2), np.int64)), "floating-point"),
    (dict(coords=np.r_[np.zeros((39, 2)), [[0, np.nan]]].astype(np.float32)), "1 NaN/Inf"),
    (dict(coords=np.r_[np.zeros((39, 2)), [[np.inf, 0]]].astype(np.float32)), "1 NaN/Inf"),
    (dict(kind=np.array(["discrete"])), "single string"),
    (dict(kind=np.array(2)), "single string"),
    (dict(kind=np.array("bimodal")), "one of discrete, continuous, homogeneous"),
    (dict(kind=np.array("continuous")), "with 2 states"),
    (dict(kind=np.array("homogeneous")), "with 2 states"),
])
def test_bad_coords_and_kind_name_the_file(tmp_path, extra, problem):
    p = _write(tmp_path / "bad.npz", **_base(K=2), **extra)
    with pytest.raises(InputError) as e:
        read_seed_states(p, n_particles=N)
    assert problem in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("extra, problem", [
    (dict(kind=np.array("discrete")), "single state"),
    (dict(kind=np.array("continuous")), "without coords"),
    (dict(kind=np.array("homogeneous"), coords=np.zeros((40, 1), np.float32)), "with 1 coordinate"),
])
def test_kind_contradicting_k1_is_refused(tmp_path, extra, problem):
    p = _write(tmp_path / "bad.npz", **_base(K=1), **extra)
    with pytest.raises(InputError) as e:
        read_seed_states(p)
    assert problem in str(e.value) and str(p) in str(e.value)


def test_others_label_the_rows_the_seed_did_not_classify(tmp_path):
    """With every row's state at its final pose (SeedStates.others, from latents.npz), the rows the seed did not
    classify take it; the seed's own labels win where it has them; counts, rows and sizes cover every row."""
    import dataclasses

    a = _base(K=2)
    s = read_seed_states(_write(tmp_path / "s.npz", **a), n_particles=N)
    others = np.random.default_rng(2).integers(0, 2, N)
    t = dataclasses.replace(s, others=others)
    lab = t.labels_for_rows(N)
    assert np.array_equal(lab[a["index"]], a["state"]) and np.array_equal(lab[40:], others[40:])
    assert t.n_labelled == N and s.n_labelled == 40
    assert t.counts().tolist() == np.bincount(lab, minlength=2).tolist() and t.counts().sum() == N
    assert np.array_equal(t.rows_of(1), np.flatnonzero(lab == 1))
    assert np.array_equal(s.rows_of(1), a["index"][a["state"] == 1])   # without others: the seed's rows only
    with pytest.raises(InputError) as e:   # another run's labels: an error naming the file, not unlabelled rows
        t.labels_for_rows(N + 1)
    assert str(tmp_path / "s.npz") in str(e.value) and f"{N} particles" in str(e.value)
