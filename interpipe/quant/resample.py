"""Intervals of the end metrics over calibration seeds *and* evaluation examples, paired.

An end metric of one setting is computed per calibration seed on a fixed held-out set (the corpus
texts, each task's prompts, the sentiment test texts) and then averaged over seeds. Two things vary in
it: the calibration draw (the seed) and which held-out examples happen to be in the set. The interval
of every end metric resamples both (:func:`metric_interval`):

1. **Examples**, by bootstrap: a replicate draws, for every held-out set, as many examples as it has,
   with replacement. One draw per replicate is shared by every calibration seed, by the FP and the
   quantized model and by every setting of the study (the draws depend only on the sets' sizes and a
   fixed seed): the seeds are evaluated on the same examples (the design is crossed, not nested, so an
   example that is hard for the model counts once for all seeds), and every drop or delta and every
   difference to a baseline (``_minus_rtn``, ``_minus_smoothquant``) is paired on the same draw.
2. **Seeds**, by the t rule: within a replicate the per-seed values ``v_s`` give the mean and the
   spread over seeds; the replicate stands for ``mean(v) + T s(v) / sqrt(n)`` with ``T`` Student's t
   with ``n - 1`` degrees of freedom. The interval is the 2.5 % and 97.5 % quantiles of that mixture over
   replicates (:func:`interpipe.stats.seed_example_interval`). Three seeds are too few for a bootstrap over
   seeds (its percentile interval from 10 distinct means understates the spread); with the t rule the
   interval is exactly the former t interval over seeds when the examples do not vary, and the
   percentile bootstrap over examples with one seed.

The per-example values (one row per calibration seed x held-out example, :meth:`EndMetrics.examples
<interpipe.quant.metrics.EndMetrics.examples>`) are each setting's ``examples.csv``; every metric below is
a function of per-set means of those columns, so a replicate is a gather and a mean.

>>> import pandas as pd
>>> rows = pd.DataFrame({"calib_seed": [0, 0, 1, 1], "set": "ioi", "example": [0, 1, 0, 1],
...                      "ld": [1.0, -1.0, 2.0, 0.5], "fp_ld": [2.0, 1.0, 2.0, 1.0]})
>>> per_seed, _ = replicates(rows, "pairwise_acc/ioi", draws(rows, 10))
>>> per_seed.tolist()
[0.5, 1.0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interpipe.stats import Interval, N_RESAMPLES, SEED, seed_example_interval

KEYS = ("calib_seed", "set", "example")
NON_TASKS = ("corpus", "sentiment", "texts")  # the held-out sets that are not causal tasks


def _loss(m):
    return (m["nll"] - m["fp_nll"]) / m["tokens"]


def _ppl(m):
    return np.exp(m["nll"] / m["tokens"]) - np.exp(m["fp_nll"] / m["tokens"])


METRICS = {  # metric -> (held-out sets: a set name or "tasks" = the mean over causal tasks, columns, per-set formula)
    "loss_delta": ("corpus", ("nll", "fp_nll", "tokens"), _loss),  # a ratio of sums: summed nll over summed tokens
    "ppl_delta": ("corpus", ("nll", "fp_nll", "tokens"), _ppl),
    "task_acc_drop": ("tasks", ("correct", "fp_correct"), lambda m: m["fp_correct"] - m["correct"]),
    "logit_diff_drop": ("tasks", ("ld", "fp_ld"), lambda m: m["fp_ld"] - m["ld"]),
    "acc_drop": ("sentiment", ("correct", "fp_correct"), lambda m: m["fp_correct"] - m["correct"]),
    "margin_drop": ("sentiment", ("margin", "fp_margin"), lambda m: m["fp_margin"] - m["margin"]),
    "cos_drop": ("texts", ("cos",), lambda m: 1.0 - m["cos"]),
}
PAIRWISE, FP_PAIRWISE = "pairwise_acc", "fp_pairwise_acc"  # per task: share of prompts with answer logit > foil's


def _spec(metric: str):
    """``(sets, columns, formula)`` of ``metric``; ``pairwise_acc/<task>`` and ``fp_pairwise_acc/<task>`` too."""
    if metric in METRICS:
        return METRICS[metric]
    name, _, task = metric.partition("/")
    column = {PAIRWISE: "ld", FP_PAIRWISE: "fp_ld"}.get(name)
    if column is None or not task:
        raise KeyError(f"no per-example definition of {metric!r}")
    return task, (column,), lambda m: m["pos"]


class Examples:
    """A setting's per-example values as arrays: per held-out set and column ``(n_seeds, n_examples)``
    (seeds ascending), with a cache of the replicates already computed (a baseline serves every method)."""

    def __init__(self, seeds: list[int], sets: dict[str, dict[str, np.ndarray]]):
        self.seeds, self.sets, self.cache = list(seeds), sets, {}

    @classmethod
    def of(cls, frame: pd.DataFrame | Examples) -> Examples:
        if isinstance(frame, Examples):
            return frame
        if frame.empty:
            return cls([], {})
        frame = frame.sort_values(["set", "calib_seed", "example"])
        seeds = sorted(int(s) for s in frame["calib_seed"].unique())
        sets = {}
        for name, rows in frame.groupby("set", sort=True):
            columns = [c for c in rows.columns if c not in KEYS and rows[c].notna().all()]
            sets[str(name)] = {c: rows[c].to_numpy(float).reshape(len(seeds), -1) for c in columns}  # (n_seeds, n)
        return cls(seeds, sets)

    def subset(self, seeds: list[int]) -> Examples:
        """The rows of ``seeds`` only (itself when they are all its seeds)."""
        if list(seeds) == self.seeds:
            return self
        keep = [self.seeds.index(s) for s in seeds]
        return Examples(seeds, {n: {c: v[keep] for c, v in cols.items()} for n, cols in self.sets.items()})


def _sets(table: Examples, sets: str, columns: tuple) -> list[str]:
    """The held-out sets a metric averages over that carry all its columns."""
    names = sorted(table.sets) if sets == "tasks" else [sets]
    return [n for n in names if n in table.sets and (sets != "tasks" or n not in NON_TASKS)
            and all(c in table.sets[n] for c in columns)]


def draws(frame: pd.DataFrame | Examples, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict[str, np.ndarray]:
    """Bootstrap draws of every held-out set as multiplicities ``(n_resamples + 1, n_examples)``: row ``r``
    counts how often replicate ``r`` drew each example (row 0, the full set, draws each once). They depend
    only on the sets' sizes and ``seed``, so every setting gets the same draws."""
    table = Examples.of(frame)
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(table.sets):
        n = next(iter(table.sets[name].values())).shape[1]
        idx = rng.integers(0, n, size=(n_resamples, n))  # (R, n) drawn example indices
        counts = np.zeros((n_resamples, n))
        np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)  # (R, n) multiplicities
        out[name] = np.vstack([np.ones((1, n)), counts])  # (R + 1, n)
    return out


def replicates(frame: pd.DataFrame | Examples, metric: str, idx: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` per calibration seed on the full sets ``(n_seeds,)`` and on every replicate ``(R, n_seeds)``
    (the seeds in ascending order); empty arrays when the values lack the metric's sets."""
    table = Examples.of(frame)
    key = (metric, id(idx))
    if key not in table.cache:
        table.cache[key] = _replicates(table, metric, idx)
    return table.cache[key]


def _replicates(table: Examples, metric: str, idx: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    sets, columns, formula = _spec(metric)
    names = _sets(table, sets, columns)
    if not names:
        return np.empty(0), np.empty((0, 0))
    values = []
    for name in names:
        means = {}
        for column in columns:
            x = table.sets[name][column]  # (n_seeds, n)
            if metric.startswith((PAIRWISE, FP_PAIRWISE)):
                column, x = "pos", (x > 0).astype(float)  # answer logit above the foil's
            counts = idx[name]  # (R + 1, n)
            means[column] = x @ counts.T / counts.shape[1]  # (n_seeds, R + 1): the mean over each draw
        values.append(formula(means))
    out = np.mean(values, axis=0)  # (n_seeds, R + 1): the mean over sets (tasks)
    return out[:, 0], out[:, 1:].T


def paired(frame: pd.DataFrame | Examples, base: pd.DataFrame | Examples, metric: str, idx: dict[str, np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of ``frame`` minus that of ``base`` per shared calibration seed, on the same draws."""
    table, other = Examples.of(frame), Examples.of(base)
    seeds = sorted(set(table.seeds) & set(other.seeds))  # paired: the calibration seeds both ran
    a, ra = replicates(table.subset(seeds), metric, idx)
    b, rb = replicates(other.subset(seeds), metric, idx)
    if not len(a) or not len(b):
        return np.empty(0), np.empty((0, 0))
    return a - b, ra - rb


def bounds(metric: str) -> tuple[float, float] | None:
    """The values a metric can take where it is bounded: a share in [0, 1], a difference of shares in
    [-1, 1]. The t part of an interval knows no bounds (three seeds put its tails far out), so the interval
    is clipped to them."""
    name = metric.split("/")[0]
    if name in (PAIRWISE, FP_PAIRWISE) and "_minus_" not in metric:
        return 0.0, 1.0
    if name in (PAIRWISE, "task_acc_drop", "acc_drop") or metric.startswith(("task_acc_drop", "acc_drop")):
        return -1.0, 1.0
    return None


def metric_interval(per_seed: np.ndarray, reps: np.ndarray, metric: str = "") -> Interval | None:
    """The seed-and-example interval of one metric (None when it has no per-example values), clipped to the
    metric's :func:`bounds`."""
    if not len(per_seed):
        return None
    iv = seed_example_interval(per_seed, reps)
    limits = bounds(metric)
    if limits is None:
        return iv
    return Interval(iv.estimate, min(max(iv.low, limits[0]), limits[1]), max(min(iv.high, limits[1]), limits[0]), iv.n)


def defined(frame: pd.DataFrame | Examples) -> list[str]:
    """Every metric the per-example values define (end metrics, then pairwise accuracy per task)."""
    table = Examples.of(frame)
    out = [m for m, (sets, cols, _) in METRICS.items() if _sets(table, sets, cols)]
    tasks = _sets(table, "tasks", ("ld",))
    return out + [f"{PAIRWISE}/{t}" for t in tasks] + [f"{FP_PAIRWISE}/{t}" for t in tasks]


__all__ = ["Examples", "METRICS", "PAIRWISE", "FP_PAIRWISE", "bounds", "defined", "draws", "metric_interval", "paired", "replicates"]
