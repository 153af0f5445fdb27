"""Pure helpers of benchmarks/cryodrgn_compare.py (log parsing, schedule projections, options); no cryoDRGN needed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "cryodrgn_compare.py"
_spec = importlib.util.spec_from_file_location("cryodrgn_compare", _PATH)
cc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cryodrgn_compare", cc)  # dataclasses look their module up
_spec.loader.exec_module(cc)


def test_parse_epoch_times_reads_abinit_and_train_vae_lines():
    log = (
        "(INFO) (abinit.py) (24-Nov-2026 07:18:55) # =====> Pretrain Epoch: 0 finished in 0:00:16.211194; "
        "total loss = 0.723361\n"
        "(INFO) (abinit.py) (24-Nov-2026 07:25:00) # =====> HPS Epoch: 1 finished in 0:06:05.500000; total loss = 1\n"
        "(INFO) (abinit.py) (25-Nov-2026 09:00:00) # =====> SGD Epoch: 2 finished in 1 day, 2:00:00.5; total\n"
    )
    assert cc.parse_epoch_times(log) == {0: pytest.approx(16.211194), 1: pytest.approx(365.5),
                                         2: pytest.approx(93600.5)}
    vae = ("# =====> Epoch: 1 Average gen loss = 0.8, KLD = 1.2, total loss = 0.9; "
           "Finished in 0:01:02.500000\n")
    assert cc.parse_epoch_times(vae) == {1: pytest.approx(62.5)}
    assert cc.parse_epoch_times("no epochs here") == {}


def test_steady_rates_skip_the_first_batch():
    log = "".join(f"(INFO) (abinit.py) (24-Nov-2026 07:{m:02d}:{sec:02d}) # [Train Epoch: 1/1] [{c}/384 particles]\n"
                  for m, sec, c in ((30, 0, 128), (30, 40, 256), (31, 20, 384)))
    log += "(INFO) (abinit.py) (24-Nov-2026 07:20:00) # [Train Epoch: 0/1] [64/384 particles]\n"
    r = cc.steady_rates(log)
    assert r[1]["s_per_image"] == pytest.approx(80.0 / 256)
    assert 0 not in r  # one line: no steady rate


def test_abinit_projection_reproduces_the_issue_estimate():
    # issue 6: ~7.7 s/image pose search and ~0.07-0.1 s/image in the other phases -> ~36 h on 5,000 images
    lo = cc.project_abinit(5000, 0.07, 7.7, 0.07)
    hi = cc.project_abinit(5000, 0.1, 7.7, 0.1)
    assert lo["pose_search_s"] == pytest.approx(3 * 5000 * 7.7)
    assert lo["sgd_s"] == pytest.approx(27 * 5000 * 0.07)
    assert 34 < lo["total_s"] / 3600 < hi["total_s"] / 3600 < 37
    # pretraining stops at n_imgs_pretrain images on large sets
    assert cc.project_abinit(50_000, 1.0, 0.0, 0.0)["pretrain_s"] == pytest.approx(10_000)


def test_seeded_projection_uses_the_training_split():
    assert cc.n_train_split(5000) == 4750
    assert cc.n_train_split(100_000) == 100_000 - 256
    p = cc.project_seeded(5000, seed_s=400.0, t_distill=0.01, t_joint=0.02, final_pass_s=10.0)
    assert p["images_total"] == 20 * 4750
    assert p["total_s"] == pytest.approx(400 + 0.6 * 95_000 * 0.01 + 0.4 * 95_000 * 0.02 + 10)


def test_phase_rates_from_step_events():
    steps = [{"phase": "seed", "images_seen": 0, "elapsed_s": 5.0},
             {"phase": "seed", "images_seen": 0, "elapsed_s": 300.0},
             {"phase": "distill", "images_seen": 32, "elapsed_s": 301.0},
             {"phase": "distill", "images_seen": 96, "elapsed_s": 303.0},
             {"phase": "joint", "images_seen": 128, "elapsed_s": 304.0},
             {"phase": "joint", "images_seen": 192, "elapsed_s": 310.0}]
    r = cc.phase_rates(steps)
    assert r["seed"]["seconds"] == 300.0
    assert r["distill"]["s_per_image"] == pytest.approx(2.0 / 64)
    assert r["joint"]["s_per_image"] == pytest.approx(6.0 / 64)


def test_parse_args_subset_and_validation():
    a = cc.parse_args(["--subset", "16,256,128", "--n", "1000"])
    assert (a.hps_images, a.sgd_images, a.vae_images) == (16, 256, 128)
    with pytest.raises(SystemExit):
        cc.parse_args(["--subset", "16,256"])
    with pytest.raises(SystemExit):
        cc.parse_args(["--n", "100", "--sgd-images", "512"])
    with pytest.raises(SystemExit):
        cc.parse_args(["--box", "63"])
