"""Figures of the weight-level studies (matplotlib, returned by stem; saved by ``StudyResult.save``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _heads(labels) -> list[str]:
    return sorted(set(labels), key=lambda s: tuple(int(x) for x in s.split(".")))


def _head_ticks(heads: list[str], max_labels: int = 40) -> tuple[list[int], list[str]]:
    """Tick positions and labels: every head, or (deep models) the first head of every few layers as ``L<n>``."""
    if len(heads) <= max_labels:
        return list(range(len(heads))), heads
    layer = [h.split(".")[0] for h in heads]
    starts = [i for i in range(len(heads)) if i == 0 or layer[i] != layer[i - 1]]
    starts = starts[:: -(-len(starts) // max_labels)]
    return starts, [f"L{layer[i]}" for i in starts]


def _composition_grid(sub) -> tuple[np.ndarray, list[str], list[str]]:
    """(sender, receiver) grid of the largest component-pair score of one mode (NaN where not causal)."""
    senders, receivers = _heads(sub["sender"]), _heads(sub["receiver"])
    grid = np.full((len(senders), len(receivers)), np.nan)
    s_idx, r_idx = {h: i for i, h in enumerate(senders)}, {h: i for i, h in enumerate(receivers)}
    grid[sub["sender"].map(s_idx).to_numpy(), sub["receiver"].map(r_idx).to_numpy()] = sub["max_component_score"].to_numpy()
    return grid, senders, receivers


def plot_talking_heads(result) -> dict:
    figs = {}
    pairs = result.tables["head_composition"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    for ax, mode in zip(axes, ("Q", "K", "V")):
        grid, senders, receivers = _composition_grid(pairs[pairs["mode"] == mode])
        im = ax.imshow(grid, cmap="viridis", vmin=0, aspect="auto", interpolation="nearest")
        ax.set_xticks(*_head_ticks(receivers), rotation=90, fontsize=7)
        ax.set_yticks(*_head_ticks(senders), fontsize=7)
        ax.set_xlabel("receiver head"), ax.set_ylabel("sender head")
        ax.set_title(f"{mode}-composition (max over component pairs)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    figs["composition_heatmaps"] = fig

    inh = result.tables["inhibition"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(inh["Q_composition"], inh["inhibition"], s=14)
    for row in inh.head(5).itertuples():
        ax.annotate(f"{row.sender}#{row.comp}", (row.Q_composition, row.inhibition), fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("Q-composition with receiver (weights)")
    ax.set_ylabel("inhibition: Δ attention to repeated items (data)")
    ax.set_title(f"receiver {result.info['edit']['receiver']}")
    figs["inhibition_scatter"] = fig

    acc = result.tables["laundry_accuracy"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for column, style in (("before", "o-"), ("weight_edit", "s--"), ("activation_edit", "x:")):
        ax.plot(acc["n_items"], acc[column], style, label=column.replace("_", " "))
    ax.set_xlabel("list length (items)"), ax.set_ylabel("accuracy"), ax.set_ylim(-0.02, 1.02)
    m = result.metrics
    ax.set_title(f"Laundry List; edit {result.info['edit']['sender']}#{m['edit_comp']} × {m['edit_alpha']:g}")
    ax.legend()
    figs["laundry_accuracy"] = fig
    return figs


def plot_bigram(result) -> dict:
    figs = {}
    dens = result.tables["mask_density"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(dens)), 4))
    colors = ["tab:orange" if k == "mlp" else "tab:blue" for k in dens["kind"]]
    ax.bar(range(len(dens)), dens["density"], color=colors)
    ax.set_xticks(range(len(dens)), dens["matrix"], rotation=90, fontsize=7)
    ax.set_ylabel("fraction of weights kept"), ax.set_title("bigram subnetwork mask density (orange: MLP)")
    figs["mask_density"] = fig

    curve = result.tables["training_curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["step"], curve["bigram_ce"], label="CE to bigram targets")
    ax.set_xlabel("step"), ax.set_ylabel("cross-entropy (nats)")
    ax2 = ax.twinx()
    ax2.plot(curve["step"], curve["expected_density"], color="tab:red", label="expected density")
    ax2.set_ylabel("expected mask density")
    ax.set_title("mask training"), fig.legend(loc="upper right")
    figs["loss_curve"] = fig

    tokens = result.tables.get("surprisal_sample")
    if tokens is not None and len(tokens):
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(tokens["bigram"], tokens["subnetwork"], s=3, alpha=0.3)
        lim = float(max(tokens["bigram"].max(), tokens["subnetwork"].max()))
        ax.plot([0, lim], [0, lim], color="grey", lw=0.5)
        ax.set_xlabel("bigram surprisal"), ax.set_ylabel("subnetwork surprisal")
        ax.set_title(f"r = {result.metrics['surprisal_corr_subnetwork']:.3f}")
        figs["surprisal_scatter"] = fig
    return figs


def plot_lnfree(result) -> dict:
    figs = {}
    curve = result.tables["training_curve"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(curve["step"], curve["loss"], label="LayerNorms frozen on the schedule")
    if "control_loss" in curve:
        ax.plot(curve["step"], curve["control_loss"], alpha=0.7, label="control: LayerNorms kept")
        ax.legend(fontsize=8)
    for row in result.tables["schedule"].itertuples():
        ax.axvline(row.step, color="grey", lw=0.4)
    ax.set_xlabel("step (grey: one LayerNorm frozen)"), ax.set_ylabel("train CE (nats/token)")
    ax.set_title("LayerNorm removal fine-tuning")
    figs["loss_curve"] = fig

    dla = result.tables["dla_exactness"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = np.arange(len(dla))
    ax.bar(x - 0.2, dla["dla_vs_direct_mean_abs"], 0.4, label="|DLA − direct effect| per component")
    ax.bar(x + 0.2, dla["dla_sum_max_abs"], 0.4, label="max |Σ DLA − logit|")
    ax.set_xticks(x, dla["model"]), ax.set_yscale("log"), ax.set_ylabel("logit units")
    ax.set_title("direct logit attribution exactness"), ax.legend(fontsize=7)
    figs["dla_exactness"] = fig
    return figs
