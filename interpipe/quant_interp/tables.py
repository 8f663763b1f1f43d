"""The study's tables: ``headline.csv`` (the shared contract), the full per-pair tables and flat metrics.

Headline rows name the quantized model as ``model`` (so the report puts the quantized models side
by side) with the FP model and the quantization setting in extra columns; the baseline of every
comparison is the FP model (1 for a ratio or a correlation, its own value for a faithfulness
metric), chance for the pairwise accuracy and the overlaps (random head sets of the circuits' sizes)
or, for the FP circuit's faithfulness, the same-size random circuits. Every row carries the pair's
``verdict`` (solved / unsolved, :mod:`.verdict`) and, where its value is NaN, the ``reason`` it is
undefined; an undefined number is never written as 0.0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from interpipe.io import write_frame
from interpipe.stats import Interval, to_metrics

HEADLINE_COLUMNS = ["model", "task", "method", "metric", "value", "ci_low", "ci_high", "baseline", "baseline_value",
                    "fp_model", "setting", "verdict", "reason"]
# headline metric -> (method column, baseline, baseline value or the key of the number that is it)
CIRCUIT_ROWS = {"quantized_pairwise_accuracy": ("model", "solved above (chance)", "min_pairwise_accuracy"),
                "quantized_clean_logit_diff": ("model", "FP model", "fp_clean_logit_diff"),
                "clean_logit_diff_retained": ("model", "FP model", 1.0),
                "fp_circuit_faithfulness": ("circuit", "random circuit, same size", "fp_circuit_random_faithfulness"),
                "fp_circuit_excess_over_random": ("circuit", "random circuit, same size", 0.0),
                "effect_correlation": ("circuit", "FP model (itself)", 1.0)}
OVERLAP_ROWS = ("circuit_jaccard", "circuit_containment")  # beside chance: random head sets of the same sizes


def _row(result: Any, task: str, method: str, metric: str, iv: Interval | float, baseline: str,
         baseline_value: float) -> dict[str, Any]:
    method_name, bits = result.pair.setting
    value, low, high = (iv.estimate, iv.low, iv.high) if isinstance(iv, Interval) else (iv, math.nan, math.nan)
    return {"model": result.pair.quantized, "task": task, "method": method, "metric": metric, "value": value,
            "ci_low": low, "ci_high": high, "baseline": baseline, "baseline_value": baseline_value,
            "fp_model": result.pair.fp, "setting": f"{method_name}-{bits}" if bits else method_name,
            "verdict": result.verdict, "reason": result.undefined.get(metric, "")}


def _baseline_value(result: Any, base: float | str) -> float:
    """A baseline given as a number, or as the key of a measured interval or number (NaN when absent)."""
    if not isinstance(base, str):
        return base
    if base in result.intervals:
        return result.intervals[base].estimate
    return float(result.numbers.get(base, math.nan))


def headline_rows(result: Any, task: str) -> list[dict[str, Any]]:
    """The quoted numbers of one pair: the verdict, circuit transfer, overlap, effects, head classes, attribution
    drift. An undefined number (:mod:`.verdict`) gets its row with NaN and the reason."""
    rows = []
    for metric, (method, baseline, base) in CIRCUIT_ROWS.items():
        if metric in result.intervals or metric in result.undefined:
            iv = result.intervals.get(metric, math.nan)
            rows.append(_row(result, task, method, metric, iv, baseline, _baseline_value(result, base)))
    for metric in OVERLAP_ROWS:
        rows.append(_row(result, task, "circuit", metric, result.numbers[metric], "chance: random heads, same sizes",
                         result.numbers.get(f"{metric}_chance", math.nan)))
    rows.append(_row(result, task, "circuit", "circuit_heads", result.numbers["quantized_circuit_heads"],
                     "FP circuit heads", result.numbers["fp_circuit_heads"]))
    rows[-1]["reason"] = result.undefined.get("quantized_circuit_heads", "")
    for name, iv in result.survival.items():
        rows.append(_row(result, task, "heads", f"{name}_survival", iv, "FP model", 1.0))
    for method, summary in result.drift.items():
        if "token_rank_correlation" in summary:
            rows.append(_row(result, "all", method, "token_rank_correlation", summary["token_rank_correlation"],
                             "FP model (itself)", 1.0))
        for key in [k for k in summary if k.endswith("_change")]:
            rows.append(_row(result, "all", method, key, summary[key], f"FP model's {key[:-7]}",
                             summary[key[:-7] + "_fp"]))
    return rows


def pair_frame(results: list[Any]) -> Any:
    """``pairs.csv``: one row per pair, its verdict, every number with its interval and what is undefined, why;
    with a rotated pair (QuaRot) among them, a ``basis`` column says what compares across its rotation (:mod:`.basis`)."""
    import pandas as pd

    rows = []
    for r in results:
        method, bits = r.pair.setting
        row: dict[str, Any] = {"fp_model": r.pair.fp, "model": r.pair.quantized, "method": method, "bits": bits,
                               "verdict": r.verdict, "basis": r.info.get("basis", "")}  # basis: rotated pairs (basis.py)
        for key, iv in r.intervals.items():
            row.update(to_metrics(key, iv))
        row.update(r.numbers)
        row["undefined"] = "; ".join(f"{k}: {why}" for k, why in sorted(r.undefined.items()))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "basis" in frame and not frame["basis"].astype(bool).any():  # no rotated pair: the column says nothing
        frame = frame.drop(columns="basis")
    return frame


def drift_frame(results: list[Any]) -> Any:
    """``attribution_drift.csv``: one row per (pair, method)."""
    import pandas as pd

    rows = []
    for r in results:
        for method, summary in r.drift.items():
            row: dict[str, Any] = {"fp_model": r.pair.fp, "model": r.pair.quantized, "method": method}
            for key, value in summary.items():
                row.update(to_metrics(key, value) if isinstance(value, Interval) else {key: value})
            rows.append(row)
    return pd.DataFrame(rows)


def write_tables(results: list[Any], task: str, out_dir: Path) -> None:
    import pandas as pd

    headline = [row for r in results for row in headline_rows(r, task)]
    write_frame(out_dir / "headline.csv", pd.DataFrame(headline, columns=HEADLINE_COLUMNS))
    write_frame(out_dir / "pairs.csv", pair_frame(results))
    effects = [r.effects.assign(fp_model=r.pair.fp, model=r.pair.quantized) for r in results]
    write_frame(out_dir / "head_effects.csv", pd.concat(effects, ignore_index=True))
    classes = [r.classes.assign(fp_model=r.pair.fp, model=r.pair.quantized) for r in results]
    write_frame(out_dir / "head_classes.csv", pd.concat(classes, ignore_index=True))
    write_frame(out_dir / "attribution_drift.csv", drift_frame(results))
    examples = [e for r in results for e in r.drift_examples]
    write_frame(out_dir / "drift_per_example.csv", pd.concat(examples, ignore_index=True) if examples
                else pd.DataFrame(columns=["example_id", "spearman", "fp_model", "model", "method"]))


def flat_metrics(results: list[Any]) -> dict[str, float]:
    """``<quantized model>/<metric>`` (with ``_ci_low``/``_ci_high``) for ``metrics.json``; NaNs (undefined
    numbers) left out, never written as 0."""
    out: dict[str, float] = {}
    for r in results:
        prefix = r.pair.quantized
        for key, iv in r.intervals.items():
            out.update(to_metrics(f"{prefix}/{key}", iv))
        out.update({f"{prefix}/{k}": v for k, v in r.numbers.items()})
        for name, iv in r.survival.items():
            out.update(to_metrics(f"{prefix}/heads/{name}_survival", iv))
        for method, summary in r.drift.items():
            for key, value in summary.items():
                out.update(to_metrics(f"{prefix}/{method}/{key}", value) if isinstance(value, Interval)
                           else {f"{prefix}/{method}/{key}": value})
    return {k: float(v) for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
