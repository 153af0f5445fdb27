"""The plugin end to end under Xvfb: train from the Train dock, explore a finished run, bad input.

Real Qt (xcb on Xvfb), real napari viewer, the real engine (Trainer, Run, analysis) on a tiny simulated dataset.
"""
from __future__ import annotations

import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt, QTimer

from cryofire_app.commands.gui import open_docks
from cryofire_app.gui.volume_display import TRAJECTORY_LAYER, VOLUME_LAYER

pytestmark = pytest.mark.gui

BOX = 32
N = 240
TINY = dict(batch_size=16, num_threads=1, latents_subset=200, val_max=16, norm_sample=100)


def _amortized_schedule() -> dict:
    """These tests exercise the GUI plumbing, not convergence: use the plain amortized (cryoFIRE) schedule when the
    engine offers other, slower ones (an ab initio seeding stage takes minutes before the first training step)."""
    import dataclasses

    from cryofire_app.training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {"schedule": "amortized"} if "schedule" in names else {}


TINY.update(_amortized_schedule())


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory) -> Path:
    """Two-state particles simulated from the bundled ribosome map (the plugin's sample data, at box 32)."""
    from cryofire_app.gui.sample import simulate_sample

    folder = simulate_sample(tmp_path_factory.mktemp("sample"), n=N, box=BOX, seed=0)
    return folder / "particles.star"


@pytest.fixture(scope="module")
def finished_run(tiny_stack, tmp_path_factory) -> Path:
    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.trainer import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.of(particles=str(tiny_stack), outdir=str(out), D=BOX, num_images=480, pose_only_images=160,
                         checkpoint_every=320, latents_every=160, seed=0, **TINY)
    events = [type(ev).__name__ for ev in Trainer(cfg).run()]
    assert events[-1] == "Finished"
    return out


def _docks(make_napari_viewer, show=False):
    viewer = make_napari_viewer(show=show)
    return viewer, open_docks(viewer)


class Heartbeat:
    """Longest gap between ticks of a 5 ms QTimer = longest time the Qt event loop was blocked (plus <= 5 ms)."""

    def __init__(self, interval_ms: int = 5):
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.max_gap = 0.0
        self.ticks = 0
        self.long: list[int] = []  # gaps over 50 ms, in ms

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
            if now - self.last > 0.05:
                self.long.append(round(1000 * (now - self.last)))
        self.last = now
        self.ticks += 1

    def start(self):
        self.last = None
        self.timer.start()

    def stop(self):
        self.timer.stop()


def test_train_dock_start_watch_stop(make_napari_viewer, qtbot, tmp_path, tiny_stack):
    viewer, docks = _docks(make_napari_viewer, show=True)
    # a laptop-sized window: with software OpenGL (llvmpipe) every repaint re-composes the whole window on the CPU,
    # so the cost of a plot update grows with the window area (a GPU composes in well under a millisecond)
    viewer.window.resize(1000, 700)
    train, loss, latent = docks["Train"], docks["Loss"], docks["Latent space"]
    outdir = tmp_path / "run"
    train.set_particles(tiny_stack, outdir=outdir)
    train.box.value = BOX
    train.num_images.value = 1_000_000  # far more than we wait for: the test must stop it
    train.pose_only.value = 320
    train.batch.value = 16
    beat = Heartbeat()
    train.start(latents_every=160, checkpoint_every=320, **{k: v for k, v in TINY.items() if k != "batch_size"})
    assert train.running
    # loss points stream into the Loss dock; latent snapshots into the scatter (both drawn: the viewer is shown)
    qtbot.waitUntil(lambda: loss.n_points >= 3, timeout=60_000)
    beat.start()
    qtbot.waitUntil(lambda: loss.n_points >= 60 and latent.analysis is not None, timeout=90_000)
    qtbot.wait(500)
    beat.stop()
    assert loss.redraw_count >= 2 and beat.ticks > 50
    # the one timing assertion the issue asks for: the GUI thread never blocks for 100 ms while training runs
    assert beat.max_gap < 0.100, f"event loop blocked for {1000 * beat.max_gap:.0f} ms (gaps > 50 ms: {beat.long})"
    train.stop()
    qtbot.waitUntil(lambda: not train.running, timeout=60_000)
    assert train.failed_message is None
    assert type(train.last_event).__name__ == "Finished" and train.last_event.stopped
    assert (outdir / "checkpoints" / "last.pt").is_file()
    assert (outdir / "latents.npz").is_file()
    # the stopped run still diagnoses its outputs: report.json and the Loss dock's banner
    assert (outdir / "report.json").is_file()
    assert loss.verdict in ("converged", "uncertain", "failed") and loss.verdict_banner.isVisible()
    # after the run the scatter holds every particle (final pass), not the training snapshot
    qtbot.waitUntil(lambda: latent.latents is not None and latent.latents.final and latent.analysis is not None,
                    timeout=30_000)
    assert len(latent.latents.z) == N
    print(f"\nmax event-loop block while training: {1000 * beat.max_gap:.1f} ms over {beat.ticks} ticks")


def _click_row(qtbot, latent, row):
    pos = latent.scatter.data_to_canvas(latent.scatter.xy[row])
    qtbot.mouseClick(latent.scatter.canvas.native, Qt.LeftButton, pos=QPoint(int(round(pos[0])),
                                                                              int(round(pos[1]))))


def _pick_two_points(qtbot, viewer, latent, run):
    """Click a point (a real Qt mouse event on the scatter canvas): its volume appears, one layer, right shape/scale;
    a second click updates the same layer in place."""
    latent.render_combo.setCurrentText("mesh (CPU)")
    row = int(np.argmax(latent.scatter.xy[:, 0]))
    _click_row(qtbot, latent, row)
    qtbot.waitUntil(lambda: VOLUME_LAYER in viewer.layers, timeout=30_000)
    layer = viewer.layers[VOLUME_LAYER]
    assert layer.metadata["particle_index"] == int(run.index[row])
    assert np.asarray(layer.metadata["volume"]).shape == (BOX, BOX, BOX)
    np.testing.assert_allclose(layer.scale, [run.apix] * 3)
    np.testing.assert_allclose(layer.metadata["volume"], run.decode(run.z[row:row + 1])[0], rtol=1e-4, atol=1e-5)
    verts = layer.data[0]
    assert len(verts) > 100 and verts.min() >= 0 and verts.max() <= BOX - 1
    n_layers = len(viewer.layers)
    row2 = int(np.argmin(latent.scatter.xy[:, 0]))
    _click_row(qtbot, latent, row2)
    qtbot.waitUntil(lambda: viewer.layers[VOLUME_LAYER].metadata["particle_index"] == int(run.index[row2]),
                    timeout=30_000)
    assert len(viewer.layers) == n_layers


def _check_screenshot_not_blank(qtbot, viewer):
    """The screenshot of a decoded volume is not blank (catches a broken GL setup)."""
    viewer.reset_view()
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4
    rgb = shot[..., :3].astype(float)
    background = np.median(rgb.reshape(-1, 3), axis=0)
    lit = np.abs(rgb - background).sum(-1) > 30
    assert 0.005 < lit.mean() < 0.9, f"screenshot looks blank ({100 * lit.mean():.2f}% non-background pixels)"


def _remesh_and_save(qtbot, viewer, latent, run, path):
    """Re-meshing at a higher iso level gives a smaller surface, same layer; the shown map saved as MRC keeps its
    voxel size."""
    nverts = len(viewer.layers[VOLUME_LAYER].data[0])
    latent.iso_spin.setValue(latent.iso_spin.value() + 1.5)
    qtbot.waitUntil(lambda: len(viewer.layers[VOLUME_LAYER].data[0]) != nverts, timeout=30_000)
    assert len(viewer.layers[VOLUME_LAYER].data[0]) < nverts
    saved = latent.save_map(path)
    with mrcfile.open(saved) as m:
        assert m.data.shape == (BOX, BOX, BOX)
        assert m.voxel_size.x == pytest.approx(run.apix, rel=1e-4)


def _pc1_trajectory(qtbot, viewer, latent, run):
    """PC1 trajectory: one 4-D layer, axis 0 = frame, a straight walk along PC1."""
    from cryofire_app.analysis.latent import fit_pca

    latent.pc_spin.setValue(1)
    latent.frames_spin.setValue(4)
    latent.run_trajectory()
    qtbot.waitUntil(lambda: TRAJECTORY_LAYER in viewer.layers, timeout=60_000)
    traj = viewer.layers[TRAJECTORY_LAYER]
    assert traj.ndim == 4
    assert np.asarray(traj.metadata["volume"]).shape == (4, BOX, BOX, BOX)
    assert sorted(np.unique(traj.data[0][:, 0]).tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(traj.scale, [1.0] + [run.apix] * 3)
    zs = np.asarray(traj.metadata["z"])
    p = fit_pca(run.z)
    t = p.pca.transform(zs)
    assert np.all(np.diff(t[:, 0]) > 0) and np.allclose(t[:, 1:], 0, atol=1e-4)  # a straight walk along PC1


def _select_and_export(qtbot, latent, run, prefix):
    """Select the left half of the scatter and export it; re-read every file."""
    from cryofire_app.io import read_ind_pkl, read_star

    xy = latent.scatter.xy
    lo, hi = xy.min(0), xy.max(0)
    mid = (lo + hi) / 2
    rows = latent.scatter.select_polygon(np.array([[lo[0] - 1, lo[1] - 1], [mid[0], lo[1] - 1], [mid[0], hi[1] + 1],
                                                   [lo[0] - 1, hi[1] + 1]]))
    assert 0 < len(rows) < N
    with qtbot.waitSignal(latent.exported, timeout=30_000) as sig:
        latent.export_selection(prefix)
    files = {p.name: p for p in sig.args[0]}
    assert set(files) == {"sel.ind.pkl", "sel.star", "sel_index.csv"}
    ind = read_ind_pkl(files["sel.ind.pkl"])
    np.testing.assert_array_equal(np.sort(ind), np.sort(run.index[rows]))
    star = read_star(files["sel.star"])
    assert len(star.particles) == len(rows)
    lines = files["sel_index.csv"].read_text().split()
    assert lines[0].startswith("index") and len(lines) == len(rows) + 1


def test_open_run_pick_trajectory_export_screenshot(make_napari_viewer, qtbot, tmp_path, finished_run):
    from cryofire_app.analysis.run import Run

    viewer, docks = _docks(make_napari_viewer, show=True)
    latent, loss, views = docks["Latent space"], docks["Loss"], docks["Viewing directions"]
    docks["Open run"].open(finished_run)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    run = Run(finished_run)
    assert len(latent.latents.z) == len(run.z) == N
    assert loss.n_points > 0  # the loss log of the run
    assert views.hist is not None and views.hist.sum() == N
    _pick_two_points(qtbot, viewer, latent, run)
    _check_screenshot_not_blank(qtbot, viewer)
    _remesh_and_save(qtbot, viewer, latent, run, tmp_path / "picked.mrc")
    _pc1_trajectory(qtbot, viewer, latent, run)
    _select_and_export(qtbot, latent, run, tmp_path / "sel")


def test_trajectory_and_pick_in_iso_mode(make_napari_viewer, qtbot, finished_run):
    """The GPU path: an Image layer with rendering='iso' (viewer hidden: no 4 s software-GL frames)."""
    viewer, docks = _docks(make_napari_viewer, show=False)
    latent = docks["Latent space"]
    docks["Open run"].open(finished_run)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    latent.render_combo.setCurrentText("iso (GPU)")
    latent.on_pick(3)
    qtbot.waitUntil(lambda: VOLUME_LAYER in viewer.layers, timeout=30_000)
    layer = viewer.layers[VOLUME_LAYER]
    assert layer.rendering == "iso" and layer.data.shape == (BOX, BOX, BOX)
    thr = layer.iso_threshold
    latent.iso_spin.setValue(latent.iso_spin.value() + 1.0)
    assert layer.iso_threshold > thr
    latent.frames_spin.setValue(3)
    latent.run_trajectory()
    qtbot.waitUntil(lambda: TRAJECTORY_LAYER in viewer.layers, timeout=30_000)
    assert viewer.layers[TRAJECTORY_LAYER].data.shape == (3, BOX, BOX, BOX)


def test_newer_click_supersedes_older(make_napari_viewer, qtbot, finished_run):
    viewer, docks = _docks(make_napari_viewer)
    latent = docks["Latent space"]
    docks["Open run"].open(finished_run)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    latent.render_combo.setCurrentText("mesh (CPU)")
    for row in range(6):  # six clicks in a burst: only the last one's volume is shown
        latent.on_pick(row)
    qtbot.waitUntil(lambda: not latent._decoder_jobs.busy, timeout=30_000)
    assert viewer.layers[VOLUME_LAYER].metadata["particle_index"] == int(latent.latents.index[5])
    assert latent._decoder_jobs.dropped >= 4


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


@pytest.mark.parametrize("case", ["missing", "truncated", "mismatched"])
def test_train_dock_bad_input_notifies(make_napari_viewer, qtbot, tmp_path, fixtures_dir, tiny_stack, case):
    viewer, docks = _docks(make_napari_viewer)
    train = docks["Train"]
    if case == "missing":
        bad, ctf = tmp_path / "nope.mrcs", None
    elif case == "truncated":
        bad, ctf = fixtures_dir / "drgnai" / "tilts" / "00256_Ribosomes_1.70A.mrcs", None
    else:  # N particles, a ctf.pkl with 5 rows
        bad, ctf = tiny_stack.with_name("particles.mrcs"), fixtures_dir / "cryodrgn" / "ctf1.pkl"
    train.set_particles(bad, ctf=ctf, outdir=tmp_path / "out")
    before = len(_errors())
    train.start(**TINY)
    qtbot.waitUntil(lambda: not train.running, timeout=30_000)
    msgs = _errors()[before:]
    assert train.failed_message, "no failure reported"
    name = (ctf or bad).name if case == "mismatched" else bad.name
    assert any(name in m for m in msgs), msgs
    assert "failed" in train.status.value
    # no crash: the dock is usable again and the viewer still works
    assert train.start_btn.enabled and not train.running
    viewer.add_image(np.zeros((4, 4)))


def test_train_dock_refuses_bad_settings_before_starting(make_napari_viewer, qtbot, tmp_path, tiny_stack):
    """A setting out of range is refused by the engine's config check when Start is pressed: one error naming the
    option, no thread, nothing written."""
    viewer, docks = _docks(make_napari_viewer)
    train = docks["Train"]
    train.set_particles(tiny_stack, outdir=tmp_path / "out")
    before = len(_errors())
    train.start(**dict(TINY, lr=-1.0))
    assert not train.running and train.worker is None
    msgs = _errors()[before:]
    assert len(msgs) == 1 and "--lr" in msgs[0], msgs
    assert train.status.value.startswith("not started") and not (tmp_path / "out").exists()
