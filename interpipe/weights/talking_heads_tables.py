"""Talking Heads' held-out tables: accuracy and item margin by length, paired gains, the headline.

Every variant is scored on the same held-out prompts: ``before`` (the unedited model), the chosen
edit as an activation edit and as a saved weight edit, and ``random_component`` — the floor: the
same scale applied to the same-rank component of a head drawn at random. Two scores per prompt:
top-1 accuracy (steps of one prompt) and the item margin (the kept item's logit minus the largest
logit of the items taken out, :func:`~interpipe.weights.laundry.item_margin`), which is continuous
and so tells edits apart where accuracy ties. Intervals are bootstraps over prompts; gains are paired
(the same prompts before and after).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interpipe.weights.laundry import LaundryBatch, correct, item_margin

VARIANTS = ("before", "activation_edit", "weight_edit", "random_component")


def _groups(lengths: np.ndarray, failing: list[int]) -> list[tuple[str, np.ndarray]]:
    groups = [(f"len{n}", lengths == n) for n in sorted(set(lengths.tolist()))]
    return groups + [("all", np.ones_like(lengths, dtype=bool)), ("failing", np.isin(lengths, failing))]


def accuracy_table(test: LaundryBatch, logits: dict[str, torch.Tensor], failing: list[int]):
    """Held-out accuracy and item margin by length for every variant in ``logits``, with bootstrap
    intervals over prompts, and each edit's paired gain over ``before`` at each length and pooled over
    the ``failing`` lengths. Returns (tidy DataFrame, flat metrics)."""
    import pandas as pd

    from interpipe.stats import bootstrap, to_metrics

    paired = lambda a, b: float(np.mean(a - b))  # noqa: E731
    variants = [k for k in VARIANTS if k in logits]
    scores = {"accuracy": {k: correct(logits[k], test).numpy() for k in variants},  # (batch,) each
              "margin": {k: item_margin(logits[k], test).numpy() for k in variants}}
    rows, metrics = [], {}
    for name, sel in _groups(test.lengths.numpy(), failing):
        if not sel.any():
            continue
        row = {"group": name, "n": int(sel.sum())}
        for score, by_variant in scores.items():
            prefix = "" if score == "accuracy" else "margin_"
            for k in variants:
                iv = bootstrap(by_variant[k][sel])
                metrics.update(to_metrics(f"{score}_{name}_{k}", iv))
                row.update({f"{prefix}{k}": iv.estimate, f"{prefix}{k}_ci_low": iv.low, f"{prefix}{k}_ci_high": iv.high})
            for k in variants[1:]:
                iv = bootstrap(by_variant[k][sel], by_variant["before"][sel], statistic=paired)
                gain = "gain" if score == "accuracy" else "margin_gain"
                metrics.update(to_metrics(f"{gain}_{name}_{k}", iv))
                row.update({f"{gain}_{k}": iv.estimate, f"{gain}_{k}_ci_low": iv.low, f"{gain}_{k}_ci_high": iv.high})
        rows.append(row)
    if "gain_failing_weight_edit" in metrics:
        metrics["gain_failing_real"] = int(metrics["gain_failing_weight_edit_ci_low"] > 0)  # paired interval above 0
    return pd.DataFrame(rows), metrics


def _row(model: str, metric: str, method: str, metrics: dict, key: str, baseline: str, baseline_key: str | None,
         note: str) -> dict:
    return {"model": model, "task": "laundry_list", "method": method, "metric": metric, "value": metrics[key],
            "ci_low": metrics[key + "_ci_low"], "ci_high": metrics[key + "_ci_high"], "baseline": baseline,
            "baseline_value": metrics[baseline_key] if baseline_key else 0.0, "note": note}


def headline_frame(model: str, metrics: dict, failing: list[int]):
    """The quoted numbers: held-out accuracy at the failing lengths after the weight edit (baseline: the
    unedited model); the paired gains in accuracy and item margin there (baseline: the random
    component's gain, the floor); accuracy over all lengths."""
    import pandas as pd

    where = f"failing lengths {list(failing)}, chosen on the selection prompts"
    rows = []
    for group, note in (("failing", where), ("all", "every held-out length")):
        for variant in VARIANTS[1:3]:
            key = f"accuracy_{group}_{variant}"
            if key in metrics:
                rows.append(_row(model, f"accuracy_{group}", variant, metrics, key, "unedited model",
                                 f"accuracy_{group}_before", note))
    for gain in ("gain", "margin_gain"):
        key = f"{gain}_failing_weight_edit"
        floor = f"{gain}_failing_random_component"
        if key in metrics:
            rows.append(_row(model, f"{gain}_failing", "weight_edit", metrics, key,
                             "random component of the same rank" if floor in metrics else "no change",
                             floor if floor in metrics else None, where + "; paired over the same held-out prompts"))
    return pd.DataFrame(rows)


def summary_metrics(channels, inhibition, weights, logits: dict) -> dict:
    """Top channel against its random baseline, inhibition, weight vs activation edit agreement."""
    from scipy import stats

    from interpipe.weights.composition import random_baseline

    metrics = {
        "top_channel_score": float(channels["score"].iloc[0]),
        "random_pair_baseline": random_baseline(weights.W_O.shape[-1]),
        "inhibition_top": float(inhibition["inhibition"].iloc[0]),
        "inhibition_top_first_mention": float(inhibition["inhibition_first_mention"].iloc[0]),
        "edit_max_logit_gap": float((logits["weight_edit"] - logits["activation_edit"]).abs().max()),  # ~0 expected
    }
    if len(inhibition) >= 2:
        r_q = stats.pearsonr(inhibition["Q_composition"], inhibition["inhibition"])
        rho_q = stats.spearmanr(inhibition["Q_composition"], inhibition["inhibition"])
        for name, value in (("pearson", r_q.statistic), ("spearman", rho_q.statistic)):
            if math.isfinite(float(value)):  # undefined for constant scores
                metrics[f"inhibition_vs_q_composition_{name}"] = float(value)
    return metrics
