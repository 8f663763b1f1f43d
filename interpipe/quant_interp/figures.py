"""Figures of the study: the key figure (solved or not, and the FP circuit inside each solved quantized model)
and attribution drift.

Every function returns a matplotlib figure; :func:`write_figures` saves them as ``headline_*.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interpipe.io import save_figure

MARKERS = "osD^vP*X"  # one per FP model


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errors(iv: Any) -> list[list[float]]:
    return [[max(iv.estimate - iv.low, 0.0)], [max(iv.high - iv.estimate, 0.0)]]


def _solved_panel(ax: Any, results: list[Any], fps: list[str]) -> None:
    """Retained logit difference against the quantized model's pairwise accuracy, the solved rule's bound
    as a vertical line; unsolved pairs hollow."""
    for r in results:
        method, bits = r.pair.setting
        accuracy, retained = r.intervals.get("quantized_pairwise_accuracy"), r.intervals["clean_logit_diff_retained"]
        if accuracy is None:  # a pair saved before the solved rule: nothing to place it by
            continue
        marker = MARKERS[fps.index(r.pair.fp) % len(MARKERS)]
        ax.errorbar([accuracy.estimate], [retained.estimate], xerr=_errors(accuracy), yerr=_errors(retained), fmt=marker,
                    capsize=3, label=f"{r.pair.fp} {method} {bits} ({r.verdict})".strip(),
                    mfc="none" if r.verdict == "unsolved" else None)
        ax.annotate(f"{method} {bits}", (accuracy.estimate, retained.estimate), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    bound = results[0].numbers.get("min_pairwise_accuracy", 0.5) if results else 0.5
    ax.axvline(bound, color="C3", lw=1, ls=":")
    ax.axhline(1.0, color="0.7", lw=1, ls="--")
    ax.set(xlabel=f"quantized model's pairwise IOI accuracy (solved: interval above {bound:g})",
           ylabel="clean logit difference retained (quantized / FP)", xlim=(-0.05, 1.05))
    ax.legend(fontsize=7, loc="best")


def solved_and_transfer(results: list[Any]) -> Any:
    """Left: does the quantized model still solve IOI (pairwise accuracy vs the logit difference it keeps)?
    Right: the FP circuit's faithfulness inside each solved quantized model beside its same-size random
    circuits; an unsolved pair is marked undefined there, not drawn as a ratio."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    fps = list(dict.fromkeys(r.pair.fp for r in results))
    _solved_panel(left, results, fps)
    for i, r in enumerate(results):
        marker = MARKERS[fps.index(r.pair.fp) % len(MARKERS)]
        faith = r.intervals.get("fp_circuit_faithfulness")
        if faith is None:
            right.annotate("undefined\n(unsolved)", (i, 0.5), xycoords=("data", "axes fraction"), ha="center",
                           va="center", fontsize=8, color="C3")
            continue
        right.errorbar([i], [faith.estimate], yerr=_errors(faith), fmt=marker, capsize=3, color="C0")
        rand = r.intervals.get("fp_circuit_random_faithfulness")
        if rand is not None:
            right.errorbar([i + 0.15], [rand.estimate], yerr=_errors(rand), fmt="x", capsize=3, color="0.5")
    right.axhline(1.0, color="0.7", lw=1, ls="--")
    right.set_xticks(range(len(results)), [r.pair.quantized for r in results], rotation=30, ha="right", fontsize=8)
    right.set_xlim(-0.5, len(results) - 0.5)
    right.set(ylabel="FP circuit faithfulness in the quantized model", title="circuit (dot) vs random, same size (x)")
    fig.suptitle("Does the FP IOI mechanism survive quantization? (95 % intervals over prompts)")
    fig.tight_layout()
    return fig


def attribution_drift(results: list[Any]) -> Any | None:
    """Per attribution method, the mean Spearman correlation of token scores FP vs quantized, per pair."""
    with_drift = [r for r in results if any("token_rank_correlation" in d for d in r.drift.values())]
    if not with_drift:
        return None
    plt = _plt()
    methods = list(dict.fromkeys(m for r in with_drift for m, d in r.drift.items() if "token_rank_correlation" in d))
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.45 * len(methods) * len(with_drift))), 4))
    width = 0.8 / len(with_drift)
    for j, r in enumerate(with_drift):
        xs, ys, errs = [], [], [[], []]
        for i, m in enumerate(methods):
            if "token_rank_correlation" in r.drift.get(m, {}):
                iv = r.drift[m]["token_rank_correlation"]
                xs.append(i + j * width)
                ys.append(iv.estimate)
                for k, e in enumerate(_errors(iv)):
                    errs[k] += e
        ax.bar(xs, ys, width=width, yerr=errs, capsize=2, label=r.pair.quantized)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(methods))], methods, rotation=30, ha="right")
    ax.axhline(1.0, color="0.7", lw=1, ls="--")
    ax.set(ylabel="Spearman of token scores, FP vs quantized", title="Attribution drift (mean over examples, 95 % interval)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_figures(results: list[Any], out_dir: Path) -> None:
    save_figure(solved_and_transfer(results), out_dir / "headline_solved_and_transfer.png")
    fig = attribution_drift(results)
    if fig is not None:
        save_figure(fig, out_dir / "headline_attribution_drift.png")
