"""Intervals, paired comparisons and tables of the attribution study.

Every metric is a mean over examples (AOPC per example first), reported with its percentile
bootstrap 95 % interval over examples (:mod:`interpipe.stats`). A method is compared with
``random`` and with integrated gradients as *paired* differences (same examples, resampled
together); its win-rate counts the metrics on which it beats random with the whole interval of
the difference on the better side. Directions: higher comprehensiveness, soft
comprehensiveness, mAP and cue mass are better; lower sufficiency is better; after removing the
top tokens a lower accuracy is better (comprehensiveness), after keeping only them a higher one
(sufficiency).

Top-k comprehensiveness is also placed between a floor and a ceiling (see
:mod:`interpipe.attribution.faithfulness.oracle`): a method's normalised score is the ratio of
mean differences ``(mean method − mean floor) / (mean oracle − mean floor)`` over the examples
it scored (0 = chance, 1 = the leave-one-out oracle), its interval a paired bootstrap of the three
per-example arrays together. A study is *informative* on a task only where the interval of the
oracle's paired advantage over the floor lies above 0; elsewhere no ranking can be told from chance.

>>> import numpy as np
>>> m = summarise({"comprehensiveness": np.array([0.2, 0.4, 0.3, 0.5])}, ["a", "a", "b", "b"])
>>> round(m["comprehensiveness"], 3), round(m["b/comprehensiveness"], 3), "comprehensiveness_ci_low" in m
(0.35, 0.4, True)
"""

from __future__ import annotations

import numpy as np

from interpipe.stats import bootstrap, to_metrics

HIGHER_IS_BETTER = {"comprehensiveness": True, "sufficiency": False, "soft_comprehensiveness": True,
                    "soft_sufficiency": False, "comprehensiveness_accuracy": False, "sufficiency_accuracy": True,
                    "plausibility_map": True, "cue_mass": True}
HARD_METRICS = ("comprehensiveness", "sufficiency", "comprehensiveness_accuracy", "sufficiency_accuracy")
TOP_K = "comprehensiveness_k"  # the bounded metric: AOPC of the top-k removal drop over k = 1..K
NORMALISED = "normalised_" + TOP_K
UNINFORMATIVE = "uninformative: the oracle's interval does not separate from the random floor"


def summarise(per_example: dict[str, np.ndarray], tasks: list[str], prefix: str = "") -> dict[str, float]:
    """``metric`` and ``<task>/metric`` means with their intervals (NaN examples left out)."""
    out: dict[str, float] = {}
    groups = [("", np.ones(len(tasks), dtype=bool))] + [(f"{t}/", np.array(tasks) == t) for t in dict.fromkeys(tasks)]
    for name, values in per_example.items():
        for group, rows in groups:
            if np.isfinite(values[rows]).any():
                out.update(to_metrics(f"{prefix}{group}{name}", bootstrap(values[rows])))
    return out


def paired(a: np.ndarray, b: np.ndarray):
    """Interval of the mean paired difference ``a − b`` over the examples both have."""
    return bootstrap(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))


def comparisons(per_method: dict[str, dict[str, np.ndarray]], reference: str, label: str) -> dict[str, dict]:
    """``{method: {<label>/<metric>: ...}}``: paired differences of every method against ``reference``."""
    out: dict[str, dict] = {}
    if reference not in per_method:
        return out
    ref = per_method[reference]
    for method, per in per_method.items():
        if method == reference:
            continue
        out[method] = {}
        for metric in HIGHER_IS_BETTER:
            if metric in per and metric in ref and np.isfinite(per[metric] - ref[metric]).any():
                out[method].update(to_metrics(f"{label}/{metric}", paired(per[metric], ref[metric])))
    return out


def win_table(per_method: dict[str, dict[str, np.ndarray]], reference: str = "random") -> list[dict]:
    """One row per (method, metric): difference vs ``reference`` with interval, and whether it wins."""
    rows = []
    if reference not in per_method:
        return rows
    for method, per in per_method.items():
        if method == reference:
            continue
        for metric, higher in HIGHER_IS_BETTER.items():
            if metric not in per or not np.isfinite(per[metric] - per_method[reference][metric]).any():
                continue
            iv = paired(per[metric], per_method[reference][metric])
            better = iv.low > 0 if higher else iv.high < 0
            rows.append({"method": method, "metric": metric, "higher_is_better": higher, "diff": iv.estimate,
                         "diff_ci_low": iv.low, "diff_ci_high": iv.high, "n": iv.n, "better_than_random": bool(better)})
    return rows


def relative_gap_summary(diagnostics: dict[str, list[float]], tolerance: float) -> dict[str, float]:
    """IG completeness: median relative gap (with interval), its max, steps used, share converged."""
    gap = np.asarray(diagnostics["relative_gap"], dtype=float)
    steps = np.asarray(diagnostics["steps"], dtype=float)
    out = to_metrics("relative_gap_median", bootstrap(gap, statistic=lambda g: float(np.nanmedian(g))))
    out.update(relative_gap_max=float(np.nanmax(gap)), steps_mean=float(steps.mean()), steps_max=float(steps.max()),
               converged_fraction=float(np.mean(np.nan_to_num(gap, nan=0.0) <= tolerance)))
    return out


def headline_rows(model: str, summary: dict, methods: list[str], tolerance: float) -> list[dict]:
    """Rows of ``headline.csv``: the numbers a results section quotes, each beside its baseline."""
    rows = []
    for method in methods:
        for metric in ("comprehensiveness", "sufficiency"):
            key = f"{method}/{metric}"
            if key not in summary:
                continue
            diff = f"{method}/vs_random/{metric}"
            # random's mean on the same examples (IG may run on a subset): value − paired difference
            base = summary[key] - summary[diff] if diff in summary else summary.get(f"random/{metric}", np.nan)
            rows.append({"model": model, "task": "all", "method": method, "metric": metric, "value": summary[key],
                         "ci_low": summary[key + "_ci_low"], "ci_high": summary[key + "_ci_high"],
                         "baseline": "random", "baseline_value": base,
                         "diff": summary.get(diff, np.nan), "diff_ci_low": summary.get(diff + "_ci_low", np.nan),
                         "diff_ci_high": summary.get(diff + "_ci_high", np.nan)})
    key = "integrated_gradients/relative_gap_median"
    if key in summary:
        rows.append({"model": model, "task": "all", "method": "integrated_gradients", "metric": "relative_gap_median",
                     "value": summary[key], "ci_low": summary[key + "_ci_low"], "ci_high": summary[key + "_ci_high"],
                     "baseline": "tolerance", "baseline_value": tolerance, "diff": np.nan, "diff_ci_low": np.nan,
                     "diff_ci_high": np.nan})
    ig, nxl = summary.get("integrated_gradients/seconds_per_example"), summary.get("normxlogit/seconds_per_example")
    if ig and nxl:
        rows.append({"model": model, "task": "all", "method": "normxlogit", "metric": "speedup_vs_ig", "value": ig / nxl,
                     "ci_low": np.nan, "ci_high": np.nan, "baseline": "integrated_gradients", "baseline_value": 1.0,
                     "diff": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan})
    return rows


def normalised(method: np.ndarray, floor: np.ndarray, oracle: np.ndarray):
    """``(mean method − mean floor) / (mean oracle − mean floor)`` with its paired bootstrap interval.

    Examples missing from any array (NaN) are left out of all three. A resample whose oracle and
    floor coincide has no scale: NaN, which widens nothing but leaves the interval undefined.

    >>> floor, oracle = np.array([0.0, 1.0, 0.5]), np.array([2.0, 3.0, 2.5])
    >>> normalised(oracle, floor, oracle).estimate, normalised(floor, floor, oracle).estimate
    (1.0, 0.0)
    """
    def ratio(m, f, o):
        scale = o.mean() - f.mean()
        return float((m.mean() - f.mean()) / scale) if scale != 0 else float("nan")

    return bootstrap(np.asarray(method, float), np.asarray(floor, float), np.asarray(oracle, float), statistic=ratio)


def _groups(tasks: list[str]) -> list[tuple[str, np.ndarray]]:
    return [("all", np.ones(len(tasks), dtype=bool))] + [(t, np.array(tasks) == t) for t in dict.fromkeys(tasks)]


def normalised_metrics(values: np.ndarray, floor: np.ndarray, oracle: np.ndarray, tasks: list[str]) -> dict:
    """``normalised_comprehensiveness_k`` and ``<task>/normalised_comprehensiveness_k`` with intervals."""
    out: dict[str, float] = {}
    for task, rows in _groups(tasks):
        if np.isfinite(values[rows]).any():
            out.update(to_metrics(NORMALISED if task == "all" else f"{task}/{NORMALISED}",
                                  normalised(values[rows], floor[rows], oracle[rows])))
    return out


def bounded_rows(model: str, per_method: dict[str, np.ndarray], floor: np.ndarray, oracle: np.ndarray,
                 tasks: list[str]) -> list[dict]:
    """Headline rows, for all examples and each task: the oracle against the floor (the study's range,
    ``informative`` = 1 where its paired interval lies above 0), then every method's normalised score."""
    rows = []
    for task, sel in _groups(tasks):
        sep, o, f = paired(oracle[sel], floor[sel]), bootstrap(oracle[sel]), bootstrap(floor[sel])
        informative = bool(sep.low > 0)
        common = {"model": model, "task": task, "informative": int(informative),
                  "note": "" if informative else UNINFORMATIVE}
        rows.append({**common, "method": "oracle", "metric": TOP_K, "value": o.estimate, "ci_low": o.low,
                     "ci_high": o.high, "baseline": "random floor", "baseline_value": f.estimate,
                     "baseline_ci_low": f.low, "baseline_ci_high": f.high, "diff": sep.estimate, "diff_ci_low": sep.low,
                     "diff_ci_high": sep.high, "n": sep.n})
        rows.append({**common, "method": "oracle", "metric": "informative", "value": float(informative),
                     "baseline": "1 where the oracle − floor interval lies above 0", "n": sep.n})
        for method, values in per_method.items():
            iv = normalised(values[sel], floor[sel], oracle[sel])
            rows.append({**common, "method": method, "metric": NORMALISED, "value": iv.estimate, "ci_low": iv.low,
                         "ci_high": iv.high, "baseline": "random floor 0 / oracle 1", "baseline_value": 0.0,
                         "n": iv.n})
    return rows
