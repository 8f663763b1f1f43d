"""Calibration seeds: different draws, seed intervals and paired differences to RTN by hand."""

from __future__ import annotations

import pytest

from interpipe.quant.results import aggregate_seeds
from interpipe.quant.study import calibration_texts


def test_calibration_seeds_draw_different_texts(data_root):
    a, b = calibration_texts(data_root, "corpus", 8, 0), calibration_texts(data_root, "corpus", 8, 1)
    assert len(a) == len(b) == 8 and a != b
    assert a == calibration_texts(data_root, "corpus", 8, 0)  # a seed is a fixed draw


def test_seed_interval_and_paired_difference_by_hand():
    rtn = [{"calib_seed": s, "loss_delta": v, "fp_loss": 1.0} for s, v in zip([0, 1, 2], [3.0, 5.0, 4.0])]
    method = [{"calib_seed": s, "loss_delta": v, "fp_loss": 1.0} for s, v in zip([0, 1, 2], [1.0, 2.0, 3.0])]
    out = aggregate_seeds(method, rtn)
    # mean 2, sd 1, t(0.975, df=2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.484138
    assert out["loss_delta"] == pytest.approx(2.0)
    assert out["loss_delta_ci_low"] == pytest.approx(2.0 - 2.484138, abs=1e-5)
    assert out["loss_delta_ci_high"] == pytest.approx(2.0 + 2.484138, abs=1e-5)
    # paired by seed: -2, -3, -1 -> mean -2, sd 1
    assert out["loss_delta_minus_rtn"] == pytest.approx(-2.0)
    assert out["loss_delta_minus_rtn_ci_high"] == pytest.approx(-2.0 + 2.484138, abs=1e-5)
    assert out["fp_loss"] == 1.0 and "fp_loss_ci_low" not in out and out["n_seeds"] == 3
    # another named baseline, seeds matched by id (not by order): 1 - 2, 2 - 2, 3 - 5 -> -1, 0, -2
    sq = [{"calib_seed": s, "loss_delta": v} for s, v in zip([2, 0, 1], [5.0, 2.0, 2.0])]
    assert aggregate_seeds(method, None, {"smoothquant": sq})["loss_delta_minus_smoothquant"] == pytest.approx(-1.0)
