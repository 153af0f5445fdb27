"""Selection export on real metadata: the written STAR/.cs/ind.pkl reopen to exactly the selected particles."""
from __future__ import annotations

import numpy as np
import pytest

from cryofire_app.analysis.selection import export_selection
from cryofire_app.io import read_ind_pkl
from cryofire_app.io.cs import read_cs
from cryofire_app.io.particles import load_particles


def test_export_from_relion_star(fixtures_dir, tmp_path):
    ps = load_particles(fixtures_dir / "cryodrgn" / "relion31.star", require_even=False)
    sel = np.array([4, 1])
    files = export_selection(tmp_path / "out" / "sel", sel, particles=ps, labels=np.array([0, 2]))
    names = sorted(p.name for p in files)
    assert names == ["sel.ind.pkl", "sel.star", "sel_index.csv"]
    assert read_ind_pkl(tmp_path / "out" / "sel.ind.pkl").tolist() == [4, 1]
    back = load_particles(tmp_path / "out" / "sel.star", require_even=False)
    assert len(back) == 2
    assert np.array_equal(back.images[:], ps.images[sel])
    assert np.allclose(back.ctf[:, 2:], ps.ctf[sel][:, 2:], atol=1e-3)
    # poses are the metadata's (no predicted poses given): rotations and shifts survive the round trip
    assert np.allclose(back.rots, ps.rots[sel], atol=1e-4)
    assert np.allclose(back.trans_px, ps.trans_px[sel], atol=1e-3)
    import starfile

    star = starfile.read(tmp_path / "out" / "sel.star")
    assert star["particles"]["rlnClassNumber"].tolist() == [1, 3]


def test_export_predicted_poses_and_cs(fixtures_dir, tmp_path):
    src = fixtures_dir / "cryodrgn" / "empiar_10076_7.cs"
    ps = load_particles(src, datadir=fixtures_dir / "cryodrgn")
    sel = np.array([6, 0, 3])
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(3, random_state=0).as_matrix()
    trans = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])  # pixels of this (same-box) set
    files = export_selection(tmp_path / "p", sel, rot=rot, trans=trans, particles=ps)
    assert sorted(p.name for p in files) == ["p.cs", "p.ind.pkl", "p.star"]
    sub = read_cs(tmp_path / "p.cs")
    orig = read_cs(src)
    assert sub.dtype == orig.dtype and np.array_equal(sub, orig[sel])
    back = load_particles(tmp_path / "p.star")
    assert np.allclose(back.rots, rot, atol=1e-4)
    assert np.allclose(back.trans_px, trans, atol=1e-3)
    assert np.array_equal(back.images[:], ps.images[sel])


def test_export_rejects_unknown_index(fixtures_dir, tmp_path):
    from cryofire_app.io.errors import InputError

    ps = load_particles(fixtures_dir / "cryodrgn" / "relion31.star", require_even=False)
    with pytest.raises(InputError, match="not in the particle file"):
        export_selection(tmp_path / "x", [2, 99], particles=ps)
    with pytest.raises(ValueError):
        export_selection(tmp_path / "x", [], particles=ps)
    # without metadata only the index files are written
    files = export_selection(tmp_path / "y", [3, 5])
    assert sorted(p.name for p in files) == ["y.ind.pkl", "y_index.csv"]
    assert (tmp_path / "y_index.csv").read_text().split() == ["index", "3", "5"]
