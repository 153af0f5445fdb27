"""Plugin manifest, MRC reader and writer (through napari's own open/save paths)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryofire_app.gui.reader import get_reader
from cryofire_app.gui.writer import write_image

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "resources" / "ribosome70S_65.mrc"


def test_manifest_validates_with_imports():
    npe2 = shutil.which("npe2") or str(Path(__import__("sys").executable).parent / "npe2")
    out = subprocess.run([npe2, "validate", "--imports", "cryofire-app"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_manifest_ships_in_package_and_matches_root_copy():
    import cryofire_app

    shipped = Path(cryofire_app.__file__).parent / "napari.yaml"
    assert not shipped.is_symlink() and shipped.read_bytes() == (ROOT / "napari.yaml").read_bytes()
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(shipped)
    assert pm.name == "cryofire-app"
    assert all(c.id.startswith("cryofire-app.") for c in pm.contributions.commands)
    titles = {w.display_name for w in pm.contributions.widgets}
    assert titles == {"Train", "Loss", "Latent space", "Viewing directions", "Open run"}


def test_reader_map_scale_from_voxel_size(tmp_path):
    vol = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    p = tmp_path / "map.mrc"
    with mrcfile.new(p) as m:
        m.set_data(vol)
        m.voxel_size = 2.5
    reader = get_reader(str(p))
    assert reader is not None and get_reader(str(tmp_path / "x.png")) is None
    [(data, kw, kind)] = reader(str(p))
    assert kind == "image" and data.shape == (12, 12, 12)
    np.testing.assert_array_equal(data, vol)
    assert kw["scale"] == (2.5, 2.5, 2.5) and kw["metadata"]["apix"] == 2.5


def test_reader_stack_scale_and_zero_voxel_size(tmp_path, make_napari_viewer):
    stack = np.random.default_rng(1).normal(size=(5, 16, 16)).astype(np.float32)
    p = tmp_path / "parts.mrcs"
    with mrcfile.new(p) as m:
        m.set_data(stack)
        m.set_image_stack()
        m.voxel_size = 1.7
    [(data, kw, _)] = get_reader(str(p))(str(p))
    assert kw["scale"] == pytest.approx((1.0, 1.7, 1.7)) and kw["metadata"]["kind"] == "stack"
    assert data.shape == (5, 16, 16)
    # the bundled map has voxel size 0 in its header: scale 1, and a warning instead of a crash
    viewer = make_napari_viewer()
    layers = viewer.open(str(MAP), plugin="cryofire-app")
    assert layers[0].data.shape == (65, 65, 65)
    assert tuple(layers[0].scale) == (1.0, 1.0, 1.0)


def test_writer_roundtrip_through_napari(tmp_path, make_napari_viewer):
    viewer = make_napari_viewer()
    vol = np.random.default_rng(2).normal(size=(10, 12, 14)).astype(np.float32)
    layer = viewer.add_image(vol, scale=(3.2, 3.2, 3.2), name="vol")
    out = tmp_path / "saved.mrc"
    written = layer.save(str(out), plugin="cryofire-app")
    assert Path(written[0]) == out
    with mrcfile.open(out) as m:
        np.testing.assert_array_equal(m.data, vol)
        assert m.voxel_size.x == pytest.approx(3.2)
    # metadata voxel size wins over the scale (decoded volumes carry it)
    paths = write_image(str(tmp_path / "b.map"), vol, {"scale": (1, 1, 1), "metadata": {"apix": 4.0}})
    with mrcfile.open(paths[0]) as m:
        assert m.voxel_size.x == pytest.approx(4.0)
    with pytest.raises(ValueError, match="4-D"):
        write_image(str(tmp_path / "c.mrc"), np.zeros((2, 3, 3, 3)), {})
