"""benchmarks/matrix.py and benchmarks/oracle.py: the case list, the Bayes oracle, the verdict confusion counting."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import matrix  # noqa: E402
import oracle  # noqa: E402


def test_cases_well_formed():
    names = [c.name for c in matrix.CASES]
    assert len(names) == len(set(names))
    smoke = matrix.suite_cases("smoke")
    full = matrix.suite_cases("full")
    assert 1 <= len(smoke) <= 4 and {c.name for c in smoke} <= {c.name for c in full}
    assert any(c.box == 32 and c.pixel_A >= 8 for c in smoke) and any(c.box == 64 for c in smoke)
    assert sum(matrix.estimate_s(c) for c in smoke) <= 20 * 60
    assert {c.box for c in full} >= {32, 64, 128}
    assert {c.snr for c in full} >= {1.0, 0.1, 0.05}
    assert len({m for c in full for m in c.maps}) >= 6
    px = [c.pixel_A for c in full]
    assert min(px) <= 1.7 and max(px) >= 14
    assert any(c.hinge_continuous for c in full) and any(c.n_states == 3 for c in full)
    assert any(c.fractions == (0.9, 0.1) for c in full) and any(c.fractions == (0.5, 0.5) for c in full)
    for c in matrix.CASES:
        assert c.box in matrix.SEED_S_PER_IMAGE and c.box % 2 == 0
        assert all(m in matrix.MAPS for m in c.maps)
        assert c.hinge_steps >= 2 or c.hinge_continuous or len(c.maps) >= 2
        if c.fractions is not None:
            assert len(c.fractions) == c.n_states and abs(sum(c.fractions) - 1) < 0.02
        if len(c.maps) > 1:   # several maps must share one grid
            assert len({matrix.MAPS[m].box for m in c.maps}) == 1 and c.apix is not None
        assert c.view_target_deg() == (3.0 if c.snr >= 0.1 else 5.0)
    with pytest.raises(SystemExit):
        matrix.suite_cases("full", ["no-such-case"])


def test_verdict_confusion_counts():
    rows = [{"verdict": "converged", "truly_converged": True}, {"verdict": "converged", "truly_converged": False},
            {"verdict": "failed", "truly_converged": False}, {"verdict": "uncertain", "truly_converged": True},
            {"verdict": "n/a", "truly_converged": False}, {"verdict": "weird", "truly_converged": True},
            {"verdict": "failed", "truly_converged": None}]
    vc = matrix.verdict_confusion(rows)
    assert vc["table"]["converged"] == {"converged": 1, "uncertain": 1, "failed": 0, "n/a": 1}
    assert vc["table"]["not converged"] == {"converged": 1, "uncertain": 0, "failed": 1, "n/a": 1}
    assert vc["false_converged"] == 1 and vc["false_failed"] == 0
    case = matrix.CASES[0]
    assert matrix.truly_converged(case, 1.0) is True and matrix.truly_converged(case, 50.0) is False
    assert matrix.truly_converged(case, None) is None and matrix.truly_converged(case, float("nan")) is None


def test_read_verdict(tmp_path):
    assert matrix.read_verdict(tmp_path)["verdict"] == "n/a"
    (tmp_path / "report.json").write_text('{"verdict": "failed", "reasons": ["poses at chance"], "checks": {}}')
    assert matrix.read_verdict(tmp_path) == {"verdict": "failed", "reasons": ["poses at chance"], "checks": {}}


def test_log_posteriors_and_summary():
    r2 = np.array([[0.0, 4.0], [4.0, 0.0], [1.0, 1.0]])
    lp = oracle.log_posteriors(r2, 1.0, np.array([0.5, 0.5]))
    assert np.allclose(np.exp(lp).sum(1), 1)
    assert lp[0].argmax() == 0 and lp[1].argmax() == 1 and np.allclose(lp[2], np.log(0.5))
    hard = oracle.log_posteriors(r2[:2], 0.0, np.array([0.9, 0.1]))   # SNR inf: the residual decides, not the prior
    assert hard[0].argmax() == 0 and hard[1].argmax() == 1
    s = oracle.summarize(lp, np.array([0, 1, 1]))
    assert s["counts_true_by_pred"][0][0] == 1 and s["n_images"] == 3


def _simulate(tmp_path, name, volumes, snr):
    from cryofire_app.simulate import SimulationConfig, simulate

    out = tmp_path / name
    simulate(SimulationConfig(outdir=str(out), n=96, volumes=volumes, apix=6.0, box=16, snr=snr, max_shift_px=2.0,
                              fractions=(0.5, 0.5), seed=3, progress=False))
    return out


def _blob_maps():
    d = 16
    ax = np.arange(d) - d // 2
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    g = lambda cx, cy, cz, s: np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))  # noqa: E731
    a = g(0, 0, 0, 2.5) + 0.7 * g(4, 1, 0, 1.5) + 0.5 * g(-2, 3, 2, 1.2)
    b = g(0, 0, 0, 2.5) + 0.7 * g(-1, -4, 1, 1.5) + 0.5 * g(-2, 3, 2, 1.2)
    return a.astype(np.float32), b.astype(np.float32)


def test_bayes_oracle_separable_and_identical(tmp_path):
    a, b = _blob_maps()
    res = oracle.bayes_oracle(_simulate(tmp_path, "sep", [a, b], float("inf")))
    assert res["confusion"] <= 0.02 and res["chance"] == 0.5
    same = oracle.bayes_oracle(_simulate(tmp_path, "same", [a, a], 0.1))
    assert 0.3 <= same["confusion"] <= 0.7   # identical maps: the posterior is the prior, labels at chance
    assert abs(same["expected_error"] - 0.5) < 0.02


def test_sim_config_of_a_case(tmp_path):
    fx = matrix.FIXTURES
    if not fx.is_dir():
        pytest.skip(f"fixtures not found: {fx}")
    for c in matrix.CASES:
        cfg = matrix.sim_config(c, tmp_path)
        assert all(Path(m).is_file() for m in cfg.maps), c.name
        assert cfg.box == c.box and cfg.n == c.n
        assert cfg.hinge.enabled == (c.hinge_steps >= 2 or c.hinge_continuous)


def test_markdown_renders_rows(tmp_path):
    c = matrix.CASES[0]
    done = dict(matrix.case_row(c, None), verdict="failed", truly_converged=False, oracle={"confusion": 0.01},
                eval={"rot_view_median_deg": 80.0, "res_major_0.5_A": None},
                train={"wall_s": 90.0, "peak_rss_mb": 900.0, "exit_status": 0},
                verdict_report={"verdict": "failed", "reasons": ["poses at chance"]})
    broken = dict(matrix.case_row(matrix.CASES[1], 2000), error="RuntimeError: x", verdict="n/a", truly_converged=None)
    stem = matrix.write_results("test", [done, broken], 2, tmp_path / "matrix-test")
    md = Path(f"{stem}.md").read_text()
    assert c.name in md and "80.00" in md and "poses at chance" in md and "--num-images 2000" in md
    assert "RuntimeError: x" in md
