"""Intervals against known answers: the normal-theory interval of a mean, paired differences."""

import numpy as np
import pytest

from interpipe.stats import bootstrap, is_interval_key, seed_interval, to_metrics


def test_mean_interval_matches_normal_theory():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    iv = bootstrap(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))  # the interval a textbook gives for n=400
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.low == pytest.approx(x.mean() - half, abs=0.06)
    assert iv.high == pytest.approx(x.mean() + half, abs=0.06)


def test_paired_difference_is_narrower_than_unpaired():
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 5, size=200)  # a per-example difficulty both methods see
    a, b = shared + 0.5 + rng.normal(0, 0.3, 200), shared + rng.normal(0, 0.3, 200)
    paired = bootstrap(a, b, statistic=lambda u, v: np.mean(u - v))
    assert paired.excludes(0.0) and paired.low > 0.3 and paired.high < 0.7
    unpaired_half = 1.96 * np.sqrt(a.var(ddof=1) / 200 + b.var(ddof=1) / 200)
    assert paired.high - paired.low < unpaired_half  # pairing removes the shared variance


def test_ratio_of_means_and_nan_and_degenerate():
    iv = bootstrap([1, 2, np.nan, 3], [2, 4, 1, 6], statistic=lambda u, v: u.mean() / v.mean())
    assert iv.n == 3 and iv.estimate == pytest.approx(0.5) and iv.low == iv.high == pytest.approx(0.5)
    assert bootstrap([4.0]).low == 4.0
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap([1, 2], [1, 2, 3], statistic=lambda u, v: 0.0)


def test_seed_interval_is_a_t_interval():
    iv = seed_interval([1.0, 2.0, 3.0])
    assert iv.estimate == 2.0 and iv.high - 2.0 == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)


def test_metric_keys():
    m = to_metrics("ioi/faithfulness", bootstrap([0.1, 0.2, 0.4]))
    assert set(m) == {"ioi/faithfulness", "ioi/faithfulness_ci_low", "ioi/faithfulness_ci_high"}
    assert is_interval_key("ioi/faithfulness_ci_high") and not is_interval_key("ioi/faithfulness")
