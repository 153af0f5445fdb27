"""`cryofire demo` end to end at a toy size (the real demo is the same code with a bigger budget)."""
from __future__ import annotations

import json

from cryofire_app.cli import main as cli

OUTPUTS = ("demo_summary.json", "maps/consensus.mrc", "maps/state_0.mrc", "data/particles.star",
           "data/gt_state_0.mrc", "data/gt_state_1.mrc", "run/latents.npz",
           "analysis/kmeans2/vol_000.mrc", "analysis/kmeans2/vol_001.mrc", "analysis/pc1/vol_004.mrc",
           "analysis/loss.png", "analysis/pc_scatter.png", "analysis/views.png", "analysis/particles.star")


def _check_outputs_and_eval(out, text) -> dict:
    """Every output file is there, the calibration folder is gone, eval.json is sane; returns eval.json."""
    assert "Results in" in text and "eval.json" in text
    for f in OUTPUTS:
        assert (out / f).is_file(), f
    assert not (out / "calibration").exists()
    res = json.loads((out / "eval.json").read_text())
    assert res["n_images"] == 200 and 0 <= res["confusion"] <= 0.5
    assert 640 <= res["train_images_seen"] <= 640 + 32  # the image budget ends it (joint phase reached)
    assert set(res["state_counts"]) == {"0", "1"}
    return res


def _check_hand(out, res: dict, text: str) -> None:
    """Step 5: the hand comes from the pose alignment against the simulated poses; maps/ holds the maps (and
    pose.pkl the poses) in that hand."""
    import numpy as np

    from cryofire_app.analysis import hand
    from cryofire_app.analysis.run import Run
    from cryofire_app.io import read_mrc, read_pose_pkl

    summ = json.loads((out / "demo_summary.json").read_text())
    assert summ["hand_from_poses"] == res["alignment"]["hand"]
    flipped = res["alignment"]["hand"] == "flipped"
    assert summ["maps_mirrored"] is flipped
    assert summ["hand"] == (hand.HAND_NOTE_FLIPPED if flipped else hand.HAND_NOTE_CORRECT)
    assert summ["hand_from_map"]["hand"] in ("correct", "flipped", "undetermined")
    assert summ["confusion"] == res["confusion"] and summ["rot_view_median_deg"] == res["rot_view_median_deg"]
    assert "hand:" in text and summ["hand"] in text
    run = Run(out / "run")
    consensus = run.decode(run.z.mean(0, keepdims=True))[0]
    written = read_mrc(out / "maps" / "consensus.mrc")[0]
    np.testing.assert_allclose(written, hand.mirror_volume(consensus) if flipped else consensus, atol=1e-6)
    k0 = read_mrc(out / "analysis" / "kmeans2" / "vol_000.mrc")[0]
    np.testing.assert_allclose(read_mrc(out / "maps" / "state_0.mrc")[0], hand.mirror_volume(k0) if flipped else k0,
                               atol=1e-6)
    for f in ("state_1.mrc", "consensus_gt_frame.mrc", "state_0_gt_frame.mrc", "pose.pkl"):
        assert (out / "maps" / f).is_file(), f
    rot, _ = read_pose_pkl(out / "maps" / "pose.pkl")
    np.testing.assert_allclose(rot, hand.mirror_rotations(run.rot) if flipped else run.rot, atol=1e-6)


def _check_volume_flip_hand(out, tmp_path) -> None:
    """`cryofire volume --flip-hand` writes the mirror image of what it writes without the flag."""
    import numpy as np

    from cryofire_app.analysis import hand
    from cryofire_app.io import read_mrc

    assert cli(["volume", str(out / "run"), "--z", "0,0", "-o", str(tmp_path / "a.mrc")]) == 0
    assert cli(["volume", str(out / "run"), "--z", "0,0", "-o", str(tmp_path / "b.mrc"), "--flip-hand"]) == 0
    a, b = read_mrc(tmp_path / "a.mrc")[0], read_mrc(tmp_path / "b.mrc")[0]
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(hand.mirror_volume(a), b)


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
    res = _check_outputs_and_eval(out, text)
    _check_hand(out, res, text)
    _check_volume_flip_hand(out, tmp_path)

    # a second demo into the same folder is refused cleanly
    assert cli(["demo", "-o", str(out), "--n", "200", "--box", "16"]) == 2
    # a pose-only fraction means nothing to the seeded schedule: refused instead of silently ignored
    assert cli(["demo", "-o", str(tmp_path / "d2"), "--schedule", "seeded", "--pose-only-fraction", "0.3"]) == 2
    assert not (tmp_path / "d2" / "data").exists()
