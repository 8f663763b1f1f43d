"""Figures of the circuit study: effect heatmaps, attention patterns of top heads, faithfulness curve.

Every function returns a matplotlib figure; :func:`interpipe.io.save_figure` writes it as PNG.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.engine import capture
from interpipe.circuits.results import CircuitResult
from interpipe.components import Component


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmaps(results: Sequence[CircuitResult], title: str = "") -> Any:
    """One heatmap panel per result (3-D grids are summed over their last axis)."""
    plt = _plt()
    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, result in zip(axes.flat, results):
        result.plot(ax=ax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(hspace=0.6, wspace=0.35)
    return fig


def attribution_scatter(pairs: Sequence[tuple[CircuitResult, CircuitResult]], title: str = "") -> Any:
    """Attribution-patching estimate against exact patching effect, one colour per grid."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for estimate, exact in pairs:
        ax.scatter(exact.effect().flatten(), estimate.effect().flatten(), s=8, alpha=0.6, label=exact.name)
    lims = ax.get_xlim()
    ax.plot(lims, lims, color="grey", lw=0.8)
    ax.set_xlabel("activation patching effect")
    ax.set_ylabel("attribution patching estimate")
    ax.set_title(title or "attribution vs exact patching")
    ax.legend(fontsize=6)
    return fig


def attention_patterns(bridge: Any, batch: PromptBatch, heads: Sequence[Component], title: str = "") -> Any:
    """Mean attention from the answer position to every source position, one panel per head (``L0H0`` when none)."""
    plt = _plt()
    heads = list(heads) or [Component.head(0, 0)]
    hooks = sorted({f"blocks.{head.layer}.attn.hook_pattern" for head in heads})
    acts, _ = capture(bridge, batch.clean_tokens, batch.answer_pos, hooks)
    rows = torch.arange(batch.size, device=batch.answer_pos.device)
    fig, axes = plt.subplots(len(heads), 1, figsize=(max(5.0, 0.3 * batch.n_pos + 2), 1.8 * len(heads)), squeeze=False)
    labels = batch.position_labels()
    for ax, head in zip(axes[:, 0], heads):
        pattern = acts[f"blocks.{head.layer}.attn.hook_pattern"][rows, head.index, batch.answer_pos]  # (batch, k_pos)
        ax.bar(range(batch.n_pos), pattern.mean(0).float().cpu().numpy())
        ax.set_ylabel(head.name)
        ax.set_ylim(0, 1)
        ax.set_xticks(range(batch.n_pos), labels, rotation=90, fontsize=7)
    axes[0, 0].set_title(title or "attention from the answer position (mean over prompts)")
    fig.tight_layout()
    return fig


def faithfulness_plot(curve: Sequence[dict], ranking: Sequence[tuple[Component, float]], k: int, heldout: dict,
                      target: float, title: str = "") -> Any:
    """Faithfulness of the top-k circuits on the selection half (with 95 % intervals) against k; the
    selected k with its held-out faithfulness and the random same-size circuits' interval; the target."""
    plt = _plt()
    ks = [p["k"] for p in curve]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.fill_between(ks, [p["low"] for p in curve], [p["high"] for p in curve], alpha=0.25, label="selection half, 95 % CI")
    ax.plot(ks, [p["faithfulness"] for p in curve], marker="o", ms=3, label="selection half")
    f = heldout.get("faithfulness")
    if f is not None:
        err = [[f - heldout["faithfulness_ci_low"]], [heldout["faithfulness_ci_high"] - f]]
        ax.errorbar([k], [f], yerr=err, fmt="s", color="black", capsize=3, label=f"held-out, k={k}")
    if "random_faithfulness" in heldout:
        r = heldout["random_faithfulness"]
        err = [[r - heldout["random_faithfulness_ci_low"]], [heldout["random_faithfulness_ci_high"] - r]]
        ax.errorbar([k], [r], yerr=err, fmt="x", color="grey", capsize=3, label="random circuits, same size")
    ax.axvline(k, color="red", lw=0.8, ls="--")
    ax.axhline(target, color="red", lw=0.6, ls=":", label=f"target {target:g}")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(-0.2, max(ks) * 1.15)  # sizes are >= 0
    ax.set_xlabel(f"circuit size k (top-ranked of {len(ranking)} components kept, the rest mean-ablated)")
    ax.set_ylabel("faithfulness (ratio of mean LD)")
    ax.set_title(title or "faithfulness of the top-k components")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
