"""Sample data (simulated on the fly from the bundled map) and the `cryofire gui` launcher."""
from __future__ import annotations

import numpy as np
import pytest

import cryofire_app.gui.sample as sample
from cryofire_app.cli import build_parser
from cryofire_app.commands.gui import DOCKS, launch

pytestmark = pytest.mark.gui


def _amortized_schedule() -> dict:
    """The plain amortized schedule when the engine also offers slower ones (GUI plumbing, not convergence)."""
    import dataclasses

    from cryofire_app.training.config import TrainConfig

    return {"schedule": "amortized"} if "schedule" in {f.name for f in dataclasses.fields(TrainConfig)} else {}


@pytest.fixture
def small_sample(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sample, "SAMPLE_N", 160)
    monkeypatch.setattr(sample, "SAMPLE_BOX", 32)
    return tmp_path / "cache"


def test_sample_data_fills_train_dock(make_napari_viewer, small_sample):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("cryofire-app", "Train")
    viewer.open_sample("cryofire-app", "two_state_ribosome")
    parts = viewer.layers["sample particles"]
    assert parts.data.shape == (160, 32, 32)
    apix = parts.metadata["apix"]
    np.testing.assert_allclose(parts.scale, [1.0, apix, apix])
    gt0, gt1 = viewer.layers["ground truth state 0"], viewer.layers["ground truth state 1"]
    assert gt0.data.shape == gt1.data.shape == (32, 32, 32)
    assert not np.allclose(gt0.data, gt1.data)  # two different states
    assert gt0.metadata["n_particles"] + gt1.metadata["n_particles"] == 160
    # the Train dock picked the particles and the ground truth up from the layer
    assert str(train.particles.value).endswith("particles.star")
    assert str(small_sample) in str(train.particles.value)
    from cryofire_app.gui.session import get_session

    labels = get_session(viewer).state.labels
    assert labels is not None and set(np.unique(labels)) == {0, 1}
    # reopening reuses the cached simulation
    stamp = small_sample / "cryofire-app" / "two-state-32-160" / "particles.mrcs"
    mtime = stamp.stat().st_mtime_ns
    viewer.open_sample("cryofire-app", "two_state_ribosome")
    assert stamp.stat().st_mtime_ns == mtime


def test_launcher_demo_starts_training(make_napari_viewer, qtbot, small_sample):
    viewer, docks = launch(demo=True, demo_images=100_000, viewer=make_napari_viewer(), batch_size=16,
                           num_threads=1, latents_every=160, checkpoint_every=100_000, val_max=16,
                           **_amortized_schedule())
    assert set(docks) == set(DOCKS)
    train, loss = docks["Train"], docks["Loss"]
    assert train.running and "sample particles" in viewer.layers
    assert train.schedule.value == "amortized"  # the form shows the schedule that runs (overridden here)
    qtbot.waitUntil(lambda: loss.n_points >= 2, timeout=60_000)
    train.stop()
    qtbot.waitUntil(lambda: not train.running, timeout=60_000)
    assert train.failed_message is None and train.last_event.stopped
    assert (train.outdir / "checkpoints" / "last.pt").is_file()


def test_cli_gui_arguments():
    args = build_parser().parse_args(["gui", "--demo", "--run", "out", "a.mrc"])
    assert args.demo and args.run == "out" and args.files == ["a.mrc"] and callable(args._run)


def test_gui_demo_trains_like_the_measured_cli_demo():
    """`cryofire gui --demo` = the data and seeded settings of `cryofire demo` (measured to converge in minutes)."""
    from cryofire_app.training.presets import GUI_DEMO_SETTINGS, demo_overrides, gui_demo_settings

    demo = build_parser().parse_args(["demo", "-o", "x"])
    assert (sample.SAMPLE_N, sample.SAMPLE_BOX, sample.SAMPLE_SNR) == (demo.n, demo.box, demo.snr)
    s = gui_demo_settings(sample.SAMPLE_N, sample.SAMPLE_BOX)
    assert s["schedule"] == "seeded" and s["num_images"] == 40 * sample.SAMPLE_N
    ref = demo_overrides(demo.n, demo.box, seed=demo.seed, num_images=demo.num_images)
    assert {k: v for k, v in s.items() if k not in GUI_DEMO_SETTINGS} == ref
    assert s["zdim"] == demo.zdim
    assert gui_demo_settings(sample.SAMPLE_N, sample.SAMPLE_BOX, num_images=5000)["num_images"] == 5000
