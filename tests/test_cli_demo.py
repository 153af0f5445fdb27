"""`cryofire demo` end to end at a toy size (the real demo is the same code with a bigger budget)."""
from __future__ import annotations

import json

from cryofire_app.cli import main as cli


def test_demo_runs_headless_and_reports(tmp_path, capsys):
    import dataclasses

    from cryofire_app.training.config import TrainConfig

    out = tmp_path / "demo"
    # the pipeline's plumbing is under test here, not convergence: the cheapest real schedule when there is a choice
    extra = ["--schedule", "amortized"] if "schedule" in {f.name for f in dataclasses.fields(TrainConfig)} else []
    rc = cli(["demo", "-o", str(out), "--n", "200", "--box", "16", "--minutes", "5", "--num-images", "640",
              "--threads", "1", *extra])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Results in" in text and "eval.json" in text
    for f in ("data/particles.star", "data/gt_state_0.mrc", "data/gt_state_1.mrc", "run/latents.npz",
              "analysis/kmeans2/vol_000.mrc", "analysis/kmeans2/vol_001.mrc", "analysis/pc1/vol_004.mrc",
              "analysis/loss.png", "analysis/pc_scatter.png", "analysis/views.png", "analysis/particles.star"):
        assert (out / f).is_file(), f
    assert not (out / "calibration").exists()
    res = json.loads((out / "eval.json").read_text())
    assert res["n_images"] == 200 and 0 <= res["confusion"] <= 0.5
    assert 640 <= res["train_images_seen"] <= 640 + 32  # the image budget ends it (joint phase reached)
    assert set(res["state_counts"]) == {"0", "1"}
    # a second demo into the same folder is refused cleanly
    assert cli(["demo", "-o", str(out), "--n", "200", "--box", "16"]) == 2
