"""Intervals on every headline number: one way to compute them, one way to name them.

Every study reports a metric with its 95 % interval beside it, under one naming rule in
``metrics.json``::

    "<group>/<name>"          the estimate (on all examples)
    "<group>/<name>_ci_low"   lower end of the 95 % interval
    "<group>/<name>_ci_high"  upper end

Intervals over examples (prompts, texts) come from :func:`bootstrap` (``scipy.stats.bootstrap``,
percentile method, a fixed seed so a rerun gives the same interval); paired comparisons
(method vs random on the same examples) resample the pairs together. Spreads over seeds come
from :func:`seed_interval` (a t interval over the per-seed values).

>>> iv = bootstrap([1.0, 2.0, 3.0, 4.0])
>>> iv.estimate, iv.low < 2.5 < iv.high
(2.5, True)
>>> to_metrics("ioi/aopc", iv)["ioi/aopc_ci_low"] == iv.low
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"  # suffixes of an interval's ends in metrics.json
LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval; ``n`` is the number of examples (or seeds) it rests on."""

    estimate: float
    low: float
    high: float
    n: int

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the interval (e.g. a difference that is not 0)."""
        return not (self.low <= value <= self.high)

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _vectorised(statistic, arrays, axis):
    # scipy passes (..., n) arrays with resamples along the leading axes; apply the scalar
    # statistic to each resample (n is small: tens to hundreds of examples)
    stacked = np.stack(np.broadcast_arrays(*arrays), axis=0)  # (k, ..., n)
    stacked = np.moveaxis(stacked, axis if axis >= 0 else stacked.ndim + axis, -1)
    flat = stacked.reshape(stacked.shape[0], -1, stacked.shape[-1])  # (k, R, n)
    values = np.array([statistic(*flat[:, r]) for r in range(flat.shape[1])], dtype=float)
    return values.reshape(stacked.shape[1:-1])


def bootstrap(*samples: Sequence[float] | np.ndarray, statistic: Callable[..., float] | None = None,
              level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over examples.

    With one sample and no statistic: the mean. With several samples of equal length they are
    resampled as pairs (the same example indices for all), and ``statistic(*samples)`` maps
    them to a number, e.g. ``lambda m, r: np.mean(m - r)`` for a method's paired advantage over
    random, or ``lambda a, b: a.mean() / b.mean()`` for a ratio of means. NaNs are dropped
    pairwise. Fewer than two examples give a degenerate interval at the estimate.
    """
    from scipy.stats import bootstrap as scipy_bootstrap

    if not samples:
        raise ValueError("bootstrap needs at least one sample")
    arrays = [np.asarray(s, dtype=float).ravel() for s in samples]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"paired samples must have equal lengths, got {[len(a) for a in arrays]}")
    keep = np.all([np.isfinite(a) for a in arrays], axis=0)
    arrays = [a[keep] for a in arrays]
    n = len(arrays[0])
    plain = statistic or (lambda a: float(np.mean(a)))
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    estimate = float(plain(*arrays))
    if n < 2 or all(np.ptp(a) == 0 for a in arrays):
        return Interval(estimate, estimate, estimate, n)
    if statistic is None:
        fn = lambda a, axis=-1: np.mean(a, axis=axis)  # noqa: E731
    else:
        fn = lambda *xs, axis=-1: _vectorised(statistic, xs, axis)  # noqa: E731
    result = scipy_bootstrap(tuple(arrays), fn, paired=len(arrays) > 1, vectorized=True,
                             confidence_level=level, n_resamples=n_resamples, method="percentile",
                             random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high), n)


def seed_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean over seeds with a t interval (the spread a rerun with another seed would show)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, mean, mean, len(x))
    half = float(t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


def seed_example_interval(per_seed: Sequence[float] | np.ndarray, replicates: np.ndarray, level: float = LEVEL) -> Interval:
    """Mean over seeds with an interval that covers the seeds and the evaluation examples.

    ``per_seed`` ``(n_seeds,)`` holds the metric of each seed on the full example set, ``replicates``
    ``(R, n_seeds)`` the same on ``R`` bootstrap draws of the examples (one draw shared by all seeds).
    Each replicate ``r`` stands for the t distribution of the seed mean, ``mean(v_r) + T s(v_r) / sqrt(n)``
    (``T`` Student's t, ``n - 1`` degrees of freedom); the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of their equal mixture, found by Brent's method. With examples that do not
    vary it is :func:`seed_interval`; with one seed the percentile bootstrap over examples.

    >>> iv = seed_example_interval([1.0, 2.0, 3.0], np.tile([1.0, 2.0, 3.0], (50, 1)))
    >>> abs(iv.low - seed_interval([1.0, 2.0, 3.0]).low) < 1e-9
    True
    """
    from scipy.optimize import brentq
    from scipy.special import stdtr, stdtrit  # Student's t cdf and its inverse

    x = np.asarray(per_seed, dtype=float)
    reps = np.asarray(replicates, dtype=float).reshape(-1, len(x))  # (R, n_seeds)
    reps = reps[np.isfinite(reps).all(axis=1)]
    n = len(x)
    if n == 0 or not np.isfinite(x).all():
        return Interval(float("nan"), float("nan"), float("nan"), n)
    mean = float(x.mean())
    if len(reps) == 0:
        return Interval(mean, mean, mean, n)
    centres = reps.mean(axis=1)  # (R,)
    if n < 2:
        low, high = np.quantile(centres, [(1 - level) / 2, (1 + level) / 2])
        return Interval(mean, float(low), float(high), n)
    scales = reps.std(axis=1, ddof=1) / np.sqrt(n)  # (R,)
    point = scales <= 1e-15 * max(1.0, float(np.abs(centres).max()))  # no spread over seeds: a point mass

    def cdf(v: float) -> float:
        z = np.where(point, np.where(centres <= v, np.inf, -np.inf), (v - centres) / np.where(point, 1.0, scales))
        return float(stdtr(n - 1, z).mean())

    q = float(stdtrit(n - 1, (1 + level) / 2))  # every quantile of the mixture lies within c -+ q s
    lo, hi = float((centres - q * scales).min()), float((centres + q * scales).max())
    if hi - lo <= 0:
        return Interval(mean, lo, hi, n)
    tol = 1e-9 * (hi - lo)
    ends = [brentq(lambda v, p=p: cdf(v) - p, lo - tol, hi + tol, xtol=tol) for p in ((1 - level) / 2, (1 + level) / 2)]
    return Interval(mean, float(ends[0]), float(ends[1]), n)


def to_metrics(key: str, interval: Interval) -> dict[str, float]:
    """``{key: estimate, key_ci_low: low, key_ci_high: high}`` for ``metrics.json``."""
    return {key: interval.estimate, key + CI_LOW: interval.low, key + CI_HIGH: interval.high}


def is_interval_key(key: str) -> bool:
    """Whether a metrics key is the end of some metric's interval (not a metric of its own)."""
    return key.endswith(CI_LOW) or key.endswith(CI_HIGH)
