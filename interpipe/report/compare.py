"""Per-study comparison tables: one row per (model, task, method, setting), one column per metric.

The best value of each metric among the rows that share a model, a task and a setting (the
methods compared under the same conditions) is marked; whether smaller or larger wins is read off
the metric's name (:meth:`ReportSettings.direction`). Costs (seconds, memory), interval bounds and
metrics of no declared direction are shown unmarked, and baseline methods (``random``) never win:
the random method being fastest says nothing. Rows without a value are dropped.

>>> import pandas as pd
>>> from interpipe.settings.report import ReportSettings
>>> rows = [dict(study="s", stage="x", model="m", method=k, task="t", setting="", metric="loss",
...              value=v, run_dir=k, config_hash="") for k, v in [("a", 2.0), ("b", 1.0)]]
>>> table = study_tables(pd.DataFrame(rows), ReportSettings())["s"]
>>> table.frame[["method", "loss", "best"]].values.tolist()
[['a', 2.0, ''], ['b', 1.0, 'loss']]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interpipe.settings.report import ReportSettings

KEYS = ["model", "task", "method", "setting"]


def lower_is_better(metric: str, settings: ReportSettings) -> bool:
    """True when a smaller value of ``metric`` is better (:meth:`ReportSettings.direction`).

    >>> [lower_is_better(m, ReportSettings()) for m in ["ce_loss", "accuracy", "examples_per_second"]]
    [True, False, False]
    """
    return settings.direction(metric) == "lower"


@dataclass
class StudyTable:
    """One study's comparison table and which cells hold the best value."""

    study: str
    frame: Any  # DataFrame: KEYS + one column per metric + "best" (the metrics this row wins)
    metrics: list[str] = field(default_factory=list)
    best: Any = None  # DataFrame of bools, same index as frame, one column per metric
    lower: dict[str, bool] = field(default_factory=dict)  # metric -> smaller is better


def study_tables(results: Any, settings: ReportSettings) -> dict[str, StudyTable]:
    """Build every study's comparison table from the tidy results.

    Rows with the same model, task, method and setting keep the value of the last ``run_dir`` in
    sort order (for dated sweep folders: the newest sweep).
    """
    import pandas as pd

    tables: dict[str, StudyTable] = {}
    compared = results[results["metric"].map(settings.compared).astype(bool)]
    for study, part in compared.groupby("study", sort=True):
        wide = part.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="last", sort=True)
        wide = wide.reset_index()
        wide.columns.name = None
        metrics = [c for c in wide.columns if c not in KEYS]
        wide = wide.dropna(how="all", subset=metrics).reset_index(drop=True)  # no empty rows
        lower = {m: lower_is_better(m, settings) for m in metrics}
        ranked = [m for m in metrics if settings.direction(m) is not None]
        best = pd.DataFrame(False, index=wide.index, columns=metrics)
        contenders = ~wide["method"].astype(str).isin(settings.baseline_methods)
        for _, group in wide[contenders].groupby(["model", "task", "setting"], sort=False):
            for metric in ranked:
                values = group[metric].dropna()
                if len(values) < 2 or values.nunique() < 2:
                    continue  # nothing to compare against
                target = values.min() if lower[metric] else values.max()
                best.loc[values.index[values == target], metric] = True
        wide["best"] = [";".join(m for m in metrics if best.at[i, m]) for i in wide.index]
        tables[str(study)] = StudyTable(str(study), wide, metrics, best, lower)
    return tables


def headline_metric(results: Any, study: str, settings: ReportSettings) -> str:
    """The metric plotted for ``study``: the configured one if reported, else the one most runs report."""
    part = results[(results["study"] == study) & results["metric"].map(settings.compared).astype(bool)]
    if settings.headline.get(study) in set(part["metric"]):
        return settings.headline[study]
    part = part[~part["metric"].str.contains("seconds|per_second", regex=True)]  # cost, not result
    if part.empty:
        return ""
    counts = part.groupby("metric")["run_dir"].nunique()
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def plot_frame(results: Any, study: str, settings: ReportSettings) -> Any:
    """Rows ``run, metric, value`` of the study's headline metric, for ``dvc plots`` (bar chart)."""
    import pandas as pd

    metric = headline_metric(results, study, settings)
    part = results[(results["study"] == study) & (results["metric"] == metric)]
    label = part[KEYS].astype(str).agg(lambda r: "/".join(v for v in r if v), axis=1) if len(part) else []
    return pd.DataFrame({"run": list(label), "metric": metric, "value": list(part["value"])},
                        columns=["run", "metric", "value"])
