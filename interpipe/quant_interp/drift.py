"""Attribution drift: how far each method's token scores and faithfulness move when the model is quantized.

Per attribution method and per example (the attribute stage's ``attributions.parquet``: one row
per example with its token ids and per-token scores), Spearman's rank correlation of the FP and
quantized models' token scores — 1 when quantization keeps the ranking of the tokens, 0 when it
scrambles it — then the mean over examples with a bootstrap interval. The faithfulness metrics of
the attribute stage's ``per_example.csv`` (comprehensiveness, sufficiency) are compared per example:
the mean change quantized − FP with a paired bootstrap interval, beside the FP mean.

>>> round(spearman(np.array([0.1, 0.5, 0.3]), np.array([1.0, 3.0, 2.0])), 3)
1.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from interpipe.stats import bootstrap

FAITHFULNESS = ("comprehensiveness", "sufficiency")  # per-example metrics whose change is reported
# methods whose scores come from a seed, not from the model: the same in both models by construction, so
# no rank correlation; their faithfulness change is the baseline of every other method's
SEEDED = ("random",)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation over the positions both score (NaN with < 2 or a constant side)."""
    from scipy.stats import spearmanr

    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _scores(folder: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(folder / "attributions.parquet", columns=["example_id", "input_ids", "scores"])


def token_rank_correlations(fp_folder: Path, quantized_folder: Path) -> Any:
    """Per example both models scored: ``example_id`` and ``spearman`` of their token scores."""
    import pandas as pd

    merged = _scores(fp_folder).merge(_scores(quantized_folder), on="example_id", suffixes=("_fp", "_q"))
    if merged.empty:
        raise ValueError(f"{fp_folder} and {quantized_folder} share no example_id: run the attribute stage on the "
                         f"same split and n_examples for both models")
    rows = []
    for r in merged.itertuples(index=False):
        if not np.array_equal(np.asarray(r.input_ids_fp), np.asarray(r.input_ids_q)):
            raise ValueError(f"example {r.example_id}: the FP and quantized models' token ids differ "
                             f"({fp_folder} vs {quantized_folder}); a quantized model must keep its tokenizer")
        rows.append({"example_id": r.example_id, "spearman": spearman(np.asarray(r.scores_fp, dtype=float),
                                                                      np.asarray(r.scores_q, dtype=float))})
    return pd.DataFrame(rows, columns=["example_id", "spearman"])


def faithfulness_changes(fp_folder: Path, quantized_folder: Path, n_resamples: int) -> dict[str, tuple]:
    """Per metric of :data:`FAITHFULNESS`: (change quantized − FP with its paired interval, FP mean)."""
    import pandas as pd

    fp = pd.read_csv(fp_folder / "per_example.csv")
    q = pd.read_csv(quantized_folder / "per_example.csv")
    merged = fp.merge(q, on="example_id", suffixes=("_fp", "_q"))
    out = {}
    for metric in FAITHFULNESS:
        if f"{metric}_fp" in merged and f"{metric}_q" in merged:
            a, b = merged[f"{metric}_fp"].to_numpy(float), merged[f"{metric}_q"].to_numpy(float)
            out[metric] = (bootstrap(b - a, n_resamples=n_resamples), float(np.nanmean(a)))
    return out


def method_drift(fp_folder: Path, quantized_folder: Path, n_resamples: int) -> tuple[dict[str, Any], Any]:
    """(summary of one method: rank correlation and faithfulness changes with intervals, per-example table).

    The folder's name is the method; a :data:`SEEDED` method gets no rank correlation (empty table).
    """
    import pandas as pd

    summary: dict[str, Any] = {}
    per_example = pd.DataFrame(columns=["example_id", "spearman"])
    if fp_folder.name not in SEEDED:
        per_example = token_rank_correlations(fp_folder, quantized_folder)
        summary["token_rank_correlation"] = bootstrap(per_example["spearman"].to_numpy(), n_resamples=n_resamples)
    if (fp_folder / "per_example.csv").exists() and (quantized_folder / "per_example.csv").exists():
        for metric, (change, fp_mean) in faithfulness_changes(fp_folder, quantized_folder, n_resamples).items():
            summary[f"{metric}_change"] = change
            summary[f"{metric}_fp"] = fp_mean
    return summary, per_example
