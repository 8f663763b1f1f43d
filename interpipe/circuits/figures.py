"""Figures of the circuit study: effect heatmaps, attention patterns of top heads, faithfulness curve.

Every function returns a matplotlib figure; :func:`interpipe.io.save_figure` writes it as PNG.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.engine import capture
from interpipe.circuits.results import CircuitResult


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


def attention_patterns(bridge: Any, batch: PromptBatch, heads: Sequence[tuple[int, int]], title: str = "") -> Any:
    """Mean attention from the answer position to every source position, one panel per head."""
    plt = _plt()
    heads = list(heads) or [(0, 0)]
    hooks = sorted({f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads})
    acts, _ = capture(bridge, batch.clean_tokens, batch.answer_pos, hooks)
    rows = torch.arange(batch.size, device=batch.answer_pos.device)
    fig, axes = plt.subplots(len(heads), 1, figsize=(max(5.0, 0.3 * batch.n_pos + 2), 1.8 * len(heads)), squeeze=False)
    labels = batch.position_labels()
    for ax, (layer, head) in zip(axes[:, 0], heads):
        pattern = acts[f"blocks.{layer}.attn.hook_pattern"][rows, head, batch.answer_pos]  # (batch, k_pos)
        ax.bar(range(batch.n_pos), pattern.mean(0).float().cpu().numpy())
        ax.set_ylabel(f"L{layer}H{head}")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(batch.n_pos), labels, rotation=90, fontsize=7)
    axes[0, 0].set_title(title or "attention from the answer position (mean over prompts)")
    fig.tight_layout()
    return fig


def faithfulness_plot(curve: Sequence[float], ranking: Sequence[tuple[str, float]], k: int, title: str = "",
                      ks: Sequence[int] | None = None) -> Any:
    """Faithfulness of the top-k circuits against k (measured at ``ks``, default 0..N), the selected k marked."""
    plt = _plt()
    ks = list(range(len(curve))) if ks is None else list(ks)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(curve) + 2), 3.5))
    ax.plot(ks, curve, marker="o", ms=3)
    ax.axvline(k, color="red", lw=0.8, ls="--")
    ax.axhline(1.0, color="grey", lw=0.6)
    names = ["∅"] + [name for name, _ in ranking]
    if ks == list(range(len(ranking) + 1)):  # every k: label each point by the component it adds
        ax.set_xticks(ks, names, rotation=90, fontsize=7)
    else:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("circuit size k (top-ranked components kept)")
    ax.set_ylabel("faithfulness")
    ax.set_title(title or "faithfulness of the top-k components (rest mean-ablated)")
    fig.tight_layout()
    return fig
