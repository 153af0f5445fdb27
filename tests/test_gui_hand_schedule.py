"""Train dock schedule choice with the ab initio seed's progress in the Loss dock, and the Latent dock's "flip hand",
driven through the real widgets under Xvfb (real napari viewer, real engine, a tiny simulated set)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from cryofire_app.commands.gui import open_docks
from cryofire_app.gui.session import get_session
from cryofire_app.gui.volume_display import VOLUME_LAYER

pytestmark = pytest.mark.gui

BOX = 32
N = 200
TINY = dict(num_threads=1, latents_subset=200, val_max=16, norm_sample=100)
# the seed at toy size: one start, few rounds, coarse grids (the stages run as in a real seeded run, only shorter)
TINY_SEED = dict(box_global=16, n_subset=N, n_restarts=1, iters_global=3, grid_dirs=48, grid_psi=12, max_shift_px=2.0,
                 box_search=16, iters_search=1, boxes_local=[16], iters_local=1, box_hetero=16, iters_als=1, seed=0)


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory) -> Path:
    from cryofire_app.gui.sample import simulate_sample

    return simulate_sample(tmp_path_factory.mktemp("sample"), n=N, box=BOX, seed=0) / "particles.star"


@pytest.fixture(scope="module")
def tiny_run(tiny_sample, tmp_path_factory) -> Path:
    """A finished tiny run (its map's hand is whatever it is: the flip control mirrors what is shown)."""
    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.trainer import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.of(particles=str(tiny_sample), outdir=str(out), D=BOX, zdim=2, num_images=320, batch_size=16,
                         pose_only_images=160, checkpoint_every=320, latents_every=160, seed=0, schedule="amortized",
                         **TINY)
    cfg.encoder.channels, cfg.decoder.hidden = (8, 16), 64
    # the original architecture: after 320 images its map is compact inside the box, so the mesh's z extent can be
    # checked against its mirror (with the fast defaults this barely trained run still has density at the box edges)
    cfg.decoder.arch, cfg.encoder.stem = "mlp", "conv"
    assert [type(ev).__name__ for ev in Trainer(cfg).run()][-1] == "Finished"
    return out


def _choose_schedules(train, tiny_sample, tmp_path):
    """The choice: seeded by default (pose-only length greyed out), amortized = the paper's schedule; picked in the
    combo box as a user does, it reaches the TrainConfig."""
    assert train.schedule.value == "seeded" and set(train.schedule.choices) == {"seeded", "amortized"}
    assert not train.pose_only.enabled
    train.schedule.native.setCurrentText("amortized")  # as a user picks it in the combo box
    assert train.schedule.value == "amortized" and train.pose_only.enabled
    train.set_particles(tiny_sample, outdir=tmp_path / "run")
    assert train.make_config().schedule == "amortized"
    train.schedule.native.setCurrentText("seeded")
    assert train.make_config().schedule == "seeded" and not train.pose_only.enabled


def _record_seed_rows(sess, train, loss) -> dict:
    """Record the seed's stages and, at each seed step, what the Loss dock's seed row and the Train dock's status
    show; also the seed row at the first training step."""
    seen = {"stages": [], "rows": [], "train_status": []}

    def on_progress(ev):   # PhaseChange "seed" -> "start", "distill" -> "end", SeedProgress -> its stage
        if type(ev).__name__ == "SeedProgress":
            seen["stages"].append(ev.stage)
        elif ev.phase in ("seed", "distill"):
            seen["stages"].append("start" if ev.phase == "seed" else "end")

    def on_step(ev):
        if ev.phase == "seed":  # what the user sees at that moment (slots run after the docks' own slots)
            seen["rows"].append((loss.seed_label.text(), loss.seed_bar.isHidden(), loss.seed_bar.value()))
            seen["train_status"].append(str(train.status.value))
        elif "first_training_step" not in seen:
            seen["first_training_step"] = (loss.seed_label.text(), loss.seed_bar.isHidden())

    sess.progress.connect(on_progress)
    sess.step.connect(on_step)
    return seen


def test_schedule_choice_reaches_the_engine_and_the_seed_shows_progress(make_napari_viewer, qtbot, tmp_path,
                                                                         tiny_sample):
    viewer = make_napari_viewer()
    docks = open_docks(viewer)
    train, loss = docks["Train"], docks["Loss"]
    _choose_schedules(train, tiny_sample, tmp_path)

    # a real seeded run: while the seed runs (no training image yet) the Loss dock's seed row moves
    train.box.value = BOX
    train.zdim.value = 2
    train.num_images.value = 100_000  # the test stops it
    train.batch.value = 16
    seen = _record_seed_rows(get_session(viewer), train, loss)
    train.start(seed_config=TINY_SEED, checkpoint_every=10_000, latents_every=10_000, **TINY)
    qtbot.waitUntil(lambda: loss.n_points >= 2, timeout=60_000)  # distill steps: the seed is over
    train.stop()
    qtbot.waitUntil(lambda: not train.running, timeout=60_000)
    assert train.failed_message is None

    import json

    assert json.loads((tmp_path / "run" / "config.json").read_text())["schedule"] == "seeded"
    assert seen["stages"][0] == "start" and seen["stages"][-1] == "end" and seen["stages"].count("end") == 1
    assert {"abinit", "global", "local", "hetero", "done"} <= set(seen["stages"])
    assert len(seen["rows"]) >= 3 and loss.seed_steps == len(seen["rows"])
    for text, hidden, _ in seen["rows"]:
        assert not hidden and text.startswith("seeding: ") and "noise variance" in text
    bars = [b for _, _, b in seen["rows"]]
    assert bars == sorted(bars) and bars[-1] > bars[0]  # the stage bar only advances
    assert all(s.startswith("seeding: ") for s in seen["train_status"])
    text, hidden = seen["first_training_step"]
    assert text.startswith("ab initio seed done in") and hidden
    # after the run the dock re-reads the run's log: the seed is summarised, not running
    assert loss.seed_label.text().startswith("ab initio seed") and loss.seed_bar.isHidden()
    # seed rounds are not images: the loss curve holds training steps only
    assert loss.n_points >= 2 and loss._steps.view()[:, 0].min() > 0


def test_flip_hand_mirrors_shown_saved_and_exported(make_napari_viewer, qtbot, tmp_path, tiny_run):
    from cryofire_app.analysis.hand import mirror_rotations, mirror_volume
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import parse_pose_star, read_mrc

    viewer = make_napari_viewer()
    docks = open_docks(viewer)
    latent = docks["Latent space"]
    docks["Open run"].open(tiny_run)
    qtbot.waitUntil(lambda: latent.analysis is not None, timeout=30_000)
    run = Run(tiny_run)
    latent.render_combo.setCurrentText("mesh (CPU)")
    assert not latent.flip_box.isChecked()
    latent.on_pick(0)
    qtbot.waitUntil(lambda: VOLUME_LAYER in viewer.layers, timeout=30_000)
    layer = viewer.layers[VOLUME_LAYER]
    v0 = np.array(layer.metadata["volume"])
    np.testing.assert_allclose(v0, run.decode(run.z[:1])[0], rtol=1e-4, atol=1e-5)
    z_verts = layer.data[0][:, 0].copy()

    # tick the box (a real click): the shown volume becomes its mirror image, mesh included
    qtbot.mouseClick(latent.flip_box, Qt.LeftButton)
    assert latent.flip_box.isChecked()
    qtbot.waitUntil(lambda: viewer.layers[VOLUME_LAYER].metadata.get("hand_flipped") is True, timeout=30_000)
    layer = viewer.layers[VOLUME_LAYER]
    np.testing.assert_array_equal(layer.metadata["volume"], mirror_volume(v0))
    zc = 2 * (BOX // 2)
    assert abs(layer.data[0][:, 0].min() - (zc - z_verts.max())) < 1.0  # z of the surface mirrored about D//2
    assert abs(layer.data[0][:, 0].max() - (zc - z_verts.min())) < 1.0
    # the saved map is the mirrored one
    latent.save_map(tmp_path / "flipped.mrc")
    np.testing.assert_allclose(read_mrc(tmp_path / "flipped.mrc")[0], mirror_volume(v0), atol=1e-6)
    # a newly decoded point comes mirrored too
    latent.on_pick(1)
    qtbot.waitUntil(lambda: viewer.layers[VOLUME_LAYER].metadata["particle_index"] == int(run.index[1]),
                    timeout=30_000)
    np.testing.assert_allclose(viewer.layers[VOLUME_LAYER].metadata["volume"],
                               mirror_volume(run.decode(run.z[1:2])[0]), rtol=1e-4, atol=1e-5)
    # exported poses go with the mirrored maps (F R F)
    rows = np.arange(10)
    latent.scatter.set_selection(rows)
    with qtbot.waitSignal(latent.exported, timeout=30_000) as sig:
        latent.export_selection(tmp_path / "sel")
    star = next(p for p in sig.args[0] if p.name == "sel.star")
    rot, _ = parse_pose_star(star, D=BOX, apix=run.apix)
    np.testing.assert_allclose(rot, mirror_rotations(run.rot[rows]), atol=1e-4)
    # untick: back to the reconstruction's hand
    qtbot.mouseClick(latent.flip_box, Qt.LeftButton)
    qtbot.waitUntil(lambda: viewer.layers[VOLUME_LAYER].metadata.get("hand_flipped") is False, timeout=30_000)
    np.testing.assert_allclose(viewer.layers[VOLUME_LAYER].metadata["volume"], run.decode(run.z[1:2])[0],
                               rtol=1e-4, atol=1e-5)
