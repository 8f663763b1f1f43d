"""Headline numbers: what each study's results section would quote, with intervals and baselines.

A study stage writes ``headline.csv`` into its output folder, one row per quoted number::

    model, task, method, metric, value, ci_low, ci_high, baseline, baseline_value[, any notes]

(``ci_*`` the 95 % interval, ``baseline`` what the number is compared with, ``baseline_value``
its value), and names its key figures ``headline_*.png``. This module reads them back for the
report page and turns them into the small ``headline.json`` that ``dvc metrics show`` prints.

>>> import pandas as pd
>>> frame = pd.DataFrame([{"model": "toy", "task": "ioi", "method": "ig", "metric": "aopc", "value": 0.5,
...                        "ci_low": 0.4, "ci_high": 0.6, "baseline": "random", "baseline_value": 0.3}])
>>> headline_metrics(frame)["ioi/ig/aopc_ci_high"]
0.6
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

REQUIRED = ("model", "task", "method", "metric", "value")
OPTIONAL = ("ci_low", "ci_high", "baseline", "baseline_value")
FILE = "headline.csv"
FIGURE_PREFIX = "headline_"


def read_headline(path: str | Path) -> Any:
    """One ``headline.csv`` with every column of ``REQUIRED`` and ``OPTIONAL`` (missing optional ones empty)."""
    import pandas as pd

    frame = pd.read_csv(path)
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise ValueError(f"{path} lacks the headline columns {missing}; a headline row needs {list(REQUIRED)}")
    for column in OPTIONAL:
        if column not in frame:
            frame[column] = float("nan") if column != "baseline" else ""
    for column in ("model", "task", "method", "metric", "baseline"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame


def headline_metrics(frame: Any) -> dict[str, float]:
    """Flat ``<task>/<method>/<metric>`` (+ ``_ci_low``, ``_ci_high``, ``_baseline``) for one model's file."""
    out: dict[str, float] = {}
    several_models = frame["model"].nunique() > 1
    for row in frame.itertuples(index=False):
        key = "/".join(p for p in (row.task, row.method, row.metric) if p and p != "nan")
        if several_models:
            key = f"{row.model}/{key}"
        for suffix, value in (("", row.value), ("_ci_low", row.ci_low), ("_ci_high", row.ci_high),
                              ("_baseline", row.baseline_value)):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isnan(number):
                out[key + suffix] = number
    return out


def format_number(x: float) -> str:
    """One number as every table of the report shows it: an integer as is, else 3 significant digits.

    >>> format_number(3.0), format_number(0.42137), format_number(float("nan"))
    ('3', '0.421', '')
    """
    if x != x:  # NaN: absent
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e12 else f"{x:.3g}"


def format_value(value: float, low: float, high: float) -> str:
    """``0.42 [0.38, 0.47]``; just the value when there is no interval.

    >>> format_value(0.4213, 0.38, 0.4711), format_value(3.0, float("nan"), float("nan"))
    ('0.421 [0.38, 0.471]', '3')
    """
    if value != value or low != low or high != high:
        return format_number(value)
    return f"{format_number(value)} [{format_number(low)}, {format_number(high)}]"


def is_headline_figure(path: str | Path) -> bool:
    return Path(path).name.startswith(FIGURE_PREFIX)
