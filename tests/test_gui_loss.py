"""Loss dock: streaming Step/Checkpoint events (the engine's own event classes), pose-only marker, log toggle."""
from __future__ import annotations

import numpy as np
import pytest

from cryofire_app.gui.loss_widget import LossWidget, ema
from cryofire_app.training.events import Checkpoint, PhaseChange, SeedProgress, Step

pytestmark = pytest.mark.gui


def _steps(n, pose_only_until):
    rng = np.random.default_rng(0)
    for i in range(n):
        seen = 32 * (i + 1)
        yield Step(step=i + 1, images_seen=seen, loss=float(1.0 / (1 + 0.01 * i) + 0.05 * rng.random()),
                   mask_radius=4 + seen // 1000, phase="pose_only" if seen < pose_only_until else "joint",
                   elapsed_s=0.01 * i, images_total=32 * n)


def test_loss_stream_and_markers(qtbot):
    w = LossWidget()
    qtbot.addWidget(w)
    w.show()
    for ev in _steps(3000, pose_only_until=20_000):
        w.add_step(ev)
    w.add_checkpoint(Checkpoint(path="x", images_seen=50_000, val_loss=0.7, pose_change_deg=None, z_change=None))
    w.redraw()
    assert w.n_points == 3000
    x, y = w.raw_curve.getData()
    assert len(x) > 0 and x.max() == 96_000
    sx, sy = w.smooth_curve.getData()
    assert np.std(np.diff(sy)) < np.std(np.diff(y))  # smoothed is smoother
    lo, hi = w.pose_region.getRegion()
    assert w.pose_region.isVisible() and lo == 0 and 19_000 < hi < 20_000
    vx, vy = w.val_curve.getData()
    assert list(vx) == [50_000] and list(vy) == [pytest.approx(0.7)]
    _, r = w.mask_curve.getData()
    assert r[0] == 4 and r[-1] == 4 + 96
    w.log_box.setChecked(True)
    assert w.plot.log_y
    w.clear()
    assert w.n_points == 0


def test_incremental_smoothing_matches_full():
    vals = np.random.default_rng(1).random(500)
    w = LossWidget()
    try:
        for i, v in enumerate(vals):
            w.add_step(Step(i, i, float(v), 4, "joint", 0.0, 500))
            if i in (10, 200, 499):
                w._dirty = True
                w.redraw()
        np.testing.assert_allclose(w.smooth_curve.getData()[1], ema(vals, w.smooth_spin.value()))
    finally:
        w.close()


def test_seed_steps_go_to_the_status_line_not_the_curve(qtbot):
    w = LossWidget()
    qtbot.addWidget(w)
    for k in range(1, 6):
        w.add_step(Step(step=k, images_seen=0, loss=0.5, mask_radius=4, phase="seed", elapsed_s=k, images_total=1000))
    assert w.n_points == 0 and w.seed_steps == 5
    assert "seed" in w.status.text() and not w.seed_bar.isHidden()
    assert w.seed_label.text().startswith("seeding: ") and "round 5" in w.seed_label.text()
    # the trainer's SeedProgress events move the stage bar; the next phase ends the seed row
    w.add_progress(SeedProgress("global", "exhaustive search", 2.0))
    assert w.seed_stage == "global" and w.seed_bar.value() == 2 and "exhaustive pose search" in w.seed_label.text()
    w.add_progress(SeedProgress("done", "done in 3 s; density sign -1; hand undetermined", 3.0))
    assert w.seed_stage == "done"  # the seed's last stage, not yet the end
    w.add_progress(PhaseChange("distill", 0, "seed done in 3 s; distilling into the encoder"))
    assert w.seed_stage is None and w.seed_bar.isHidden() and w.seed_label.text().startswith("ab initio seed done")
    w.add_step(Step(step=6, images_seen=32, loss=1.0, mask_radius=4, phase="distill", elapsed_s=6, images_total=1000))
    w._dirty = True
    w.redraw()
    assert w.n_points == 1 and list(w.raw_curve.getData()[0]) == [32]


def test_verdict_banner_from_the_event_and_from_an_opened_run(qtbot, tmp_path):
    """The run's self-diagnosis shows as a banner: red with the reasons when it failed; a run folder's report.json
    fills it when the run is opened; a new run clears it."""
    import json
    from types import SimpleNamespace

    from cryofire_app.training.events import Verdict

    w = LossWidget()
    qtbot.addWidget(w)
    w.show()
    assert not w.verdict_banner.isVisible()
    w.show_verdict(Verdict("failed", ["held-out particles match the map no better than noise"], {}, "r.json"))
    assert w.verdict == "failed" and w.verdict_banner.isVisible()
    assert "FAILED" in w.verdict_banner.text() and "no better than noise" in w.verdict_banner.text()
    assert "f4a3a3" in w.verdict_banner.styleSheet()
    w.clear()
    assert w.verdict is None and not w.verdict_banner.isVisible()
    (tmp_path / "report.json").write_text(json.dumps({"verdict": "converged", "reasons": [], "checks": {},
                                                      "reconstruction": {"res_0.143_A": 11.5, "res_0.5_A": 14.0,
                                                                         "folder": "run/reconstruction"}}))
    w.load_run_log(SimpleNamespace(outdir=str(tmp_path)))
    assert w.verdict == "converged" and "converged" in w.verdict_banner.text()
    assert "FSC 0.143 at 11.5 A" in w.verdict_banner.text()
    (tmp_path / "report.json").write_text("{ not json")          # a damaged report: no banner, no exception
    w.load_run_log(SimpleNamespace(outdir=str(tmp_path)))
    assert w.verdict is None and not w.verdict_banner.isVisible()
