"""Figures of the attribution study: removal curves, the headline bars, rank agreement.

Each function returns a matplotlib figure (Agg backend); the study saves it with
:func:`interpipe.io.save_figure`.
"""

from __future__ import annotations

import numpy as np

from interpipe.stats import CI_HIGH, CI_LOW


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_figure(curves: dict[str, "object"], x: str, title: str):
    """Comprehensiveness and sufficiency against ``x`` (ratio or layer), one line per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, frame in curves.items():
        mean = frame.groupby(x)[["comprehensiveness", "sufficiency"]].mean()
        for ax, key in zip(axes, ("comprehensiveness", "sufficiency")):
            ax.plot(mean.index, mean[key], marker="o", ms=3, label=name)
    for ax, key in zip(axes, ("comprehensiveness (higher = more faithful)", "sufficiency (lower = more faithful)")):
        ax.set_xlabel(x)
        ax.set_title(key, fontsize=9)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def rank_figure(table):
    plt = _plt()

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(table.values, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(table)), table.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(table)), table.index, fontsize=7)
    fig.colorbar(im, ax=ax, label="mean Spearman")
    ax.set_title("rank agreement between methods", fontsize=9)
    return fig


def headline_figure(summary: dict, model: str, methods: list[str]):
    """Comprehensiveness and sufficiency per method with 95 % intervals; random as the dashed line."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("comprehensiveness", "sufficiency")):
        names = [m for m in methods if f"{m}/{metric}" in summary]
        value = np.array([summary[f"{m}/{metric}"] for m in names])
        low = value - np.array([summary[f"{m}/{metric}{CI_LOW}"] for m in names])
        high = np.array([summary[f"{m}/{metric}{CI_HIGH}"] for m in names]) - value
        ax.barh(range(len(names)), value, xerr=[low, high], color="tab:blue", alpha=0.7, capsize=3)
        if f"random/{metric}" in summary:
            ax.axvline(summary[f"random/{metric}"], color="k", ls="--", lw=1, label="random")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        better = "higher" if metric == "comprehensiveness" else "lower"
        ax.set_title(f"{metric} (AOPC, {better} = more faithful)", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{model}: faithfulness with bootstrap 95 % intervals over examples", fontsize=10)
    fig.tight_layout()
    return fig


def normalised_figure(rows: list[dict], model: str):
    """Each method's normalised top-k comprehensiveness per task (0 = random floor, 1 = oracle), with intervals."""
    plt = _plt()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task and r["method"] != "oracle"]
        value = np.array([r["value"] for r in mine], dtype=float)
        err = np.abs(np.array([[r["ci_low"] for r in mine], [r["ci_high"] for r in mine]], dtype=float) - value)
        ax.barh(range(len(mine)), np.nan_to_num(value), xerr=np.nan_to_num(err), color="tab:blue", alpha=0.7, capsize=3)
        ax.axvline(0, color="k", ls="--", lw=1, label="random floor")
        ax.axvline(1, color="tab:green", ls="--", lw=1, label="leave-one-out oracle")
        ax.set_yticks(range(len(mine)), [r["method"] for r in mine], fontsize=8)
        verdict = "" if all(r["informative"] for r in mine) else " (uninformative)"
        ax.set_title(f"{task}{verdict}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: top-k comprehensiveness between chance (0) and the oracle (1), 95 % intervals",
                 fontsize=10)
    fig.tight_layout()
    return fig
