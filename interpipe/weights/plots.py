"""Figures of the weight-level studies (matplotlib, returned by stem; saved by ``StudyResult.save``).

The talking-heads tables name heads ``L3H1``; the figures read them back as
:class:`~interpipe.components.Component` values and label them by :attr:`~interpipe.components.Component.name`
(``L3H1``).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from interpipe.components import Component  # noqa: E402


def _parsed(labels) -> list[Component]:
    """The heads a table column names, row by row (each distinct name parsed once)."""
    heads = {label: Component.parse(label) for label in set(labels)}
    return [heads[label] for label in labels]


def _head_ticks(heads: list[Component], max_labels: int = 40) -> tuple[list[int], list[str]]:
    """Tick positions and labels: every head, or (deep models) the first head of every few layers as ``L<n>``."""
    if len(heads) <= max_labels:
        return list(range(len(heads))), [h.name for h in heads]
    starts = [i for i in range(len(heads)) if i == 0 or heads[i].layer != heads[i - 1].layer]
    starts = starts[:: -(-len(starts) // max_labels)]
    return starts, [f"L{heads[i].layer}" for i in starts]


def _composition_grid(sub) -> tuple[np.ndarray, list[Component], list[Component]]:
    """(sender, receiver) grid of the largest component-pair score of one mode (NaN where not causal)."""
    senders, receivers = _parsed(sub["sender"]), _parsed(sub["receiver"])
    rows, cols = sorted(set(senders)), sorted(set(receivers))
    grid = np.full((len(rows), len(cols)), np.nan)
    s_idx, r_idx = {h: i for i, h in enumerate(rows)}, {h: i for i, h in enumerate(cols)}
    grid[[s_idx[h] for h in senders], [r_idx[h] for h in receivers]] = sub["max_component_score"].to_numpy()
    return grid, rows, cols


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
        ax.annotate(f"{Component.parse(row.sender)}#{row.comp}", (row.Q_composition, row.inhibition), fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("Q-composition with receiver (weights)")
    ax.set_ylabel("inhibition: Δ attention to repeated items (data)")
    ax.set_title(f"receiver {Component.parse(result.info['edit']['receiver'])}")
    figs["inhibition_scatter"] = fig

    acc = result.tables["laundry_accuracy"]
    acc = acc[acc["group"].astype(str).str.startswith("len")]
    n_items = acc["group"].str[3:].astype(int).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    variants = (("before", "o-"), ("weight_edit", "s--"), ("activation_edit", "x:"), ("random_component", "d-."))
    for k, (column, style) in enumerate(v for v in variants if v[0] in acc):
        y = acc[column].to_numpy()
        err = np.stack([y - acc[f"{column}_ci_low"].to_numpy(), acc[f"{column}_ci_high"].to_numpy() - y])
        label = "random component (floor)" if column == "random_component" else column.replace("_", " ")
        ax.errorbar(n_items + (k - 1.5) * 0.08, y, yerr=err, fmt=style, capsize=3, label=label)
    for n in result.info.get("failing_lengths", result.info["settings"]["select_lengths"]):
        ax.axvspan(n - 0.4, n + 0.4, color="tab:red", alpha=0.06, lw=0)
    ax.set_xlabel("list length (items; shaded: failing lengths the edit was chosen at)")
    ax.set_ylabel("held-out accuracy (95 % CI)"), ax.set_ylim(-0.02, 1.02)
    m, e = result.metrics, result.info["edit"]
    sender, receiver = Component.parse(e["sender"]), Component.parse(e["receiver"])
    title = f"Laundry List; edit {sender}#{m['edit_comp']} × {m['edit_alpha']:g} (receiver {receiver})"
    if "gain_failing_weight_edit" in m:
        title += (f"\ngain at failing lengths {m['gain_failing_weight_edit']:+.3f} "
                  f"[{m['gain_failing_weight_edit_ci_low']:+.3f}, {m['gain_failing_weight_edit_ci_high']:+.3f}]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    figs["headline_laundry_accuracy"] = fig
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
    if "undecided" in curve:
        ax2.plot(curve["step"], curve["undecided"], color="tab:green", label="undecided fraction")
    ax.set_title("mask training"), fig.legend(loc="upper right")
    figs["loss_curve"] = fig

    tokens = result.tables.get("surprisal_sample")
    if tokens is not None and len(tokens):
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(tokens["bigram"], tokens["subnetwork"], s=3, alpha=0.3)
        lim = float(max(tokens["bigram"].max(), tokens["subnetwork"].max()))
        ax.plot([0, lim], [0, lim], color="grey", lw=0.5)
        ax.set_xlabel("bigram surprisal"), ax.set_ylabel("subnetwork surprisal")
        m = result.metrics
        rand = m.get("surprisal_corr_random_subnetwork", float("nan"))
        ax.set_title(f"r = {m['surprisal_corr_subnetwork']:.3f} [{m.get('surprisal_corr_subnetwork_ci_low', float('nan')):.3f}, "
                     f"{m.get('surprisal_corr_subnetwork_ci_high', float('nan')):.3f}]; random subnetwork r = {rand:.3f}\n"
                     f"{m['fraction_kept']:.4f} of masked weights kept, {m.get('undecided_at_stop', float('nan')):.4f} "
                     f"undecided after {m.get('steps_run', '?')} steps", fontsize=8)
        figs["headline_surprisal_scatter"] = fig
    return figs


def plot_lnfree(result) -> dict:
    figs = {}
    figs["loss_curve"] = _lnfree_curve(result.tables["training_curve"], result.tables["schedule"])

    dla = result.tables["dla_exactness"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = np.arange(len(dla))
    ax.bar(x - 0.2, dla["dla_vs_direct_mean_abs"], 0.4, label="|DLA − direct effect| per component")
    ax.bar(x + 0.2, dla["dla_sum_max_abs"], 0.4, label="max |Σ DLA − logit|")
    ax.set_xticks(x, dla["model"]), ax.set_yscale("log"), ax.set_ylabel("logit units")
    ax.set_title("direct logit attribution exactness"), ax.legend(fontsize=7)
    figs["dla_exactness"] = fig

    m = result.metrics
    names = [n for n in ("original", "control", "lnfree", "frozen_no_finetune") if f"ce_{n}" in m]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    y = np.array([m[f"ce_{n}"] for n in names])
    err = np.array([[m[f"ce_{n}"] - m[f"ce_{n}_ci_low"], m[f"ce_{n}_ci_high"] - m[f"ce_{n}"]] for n in names]).T
    axes[0].bar(range(len(names)), y, yerr=err, capsize=4, color=["grey", "tab:blue", "tab:orange", "tab:red"][:len(names)])
    axes[0].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    axes[0].set_ylabel("held-out CE (nats/token, 95 % CI)")
    if "ce_delta_vs_control" in m:
        axes[0].set_title(f"LN-free − control: {m['ce_delta_vs_control']:+.3f} "
                          f"[{m['ce_delta_vs_control_ci_low']:+.3f}, {m['ce_delta_vs_control_ci_high']:+.3f}]", fontsize=9)
    agree = [n for n in ("lnfree", "control", "frozen_no_finetune") if f"dla_agreement_{n}" in m]
    if agree:
        y = np.array([m[f"dla_agreement_{n}"] for n in agree])
        err = np.array([[m[f"dla_agreement_{n}"] - m[f"dla_agreement_{n}_ci_low"],
                         m[f"dla_agreement_{n}_ci_high"] - m[f"dla_agreement_{n}"]] for n in agree]).T
        axes[1].bar(range(len(agree)), y, yerr=err, capsize=4)
        axes[1].set_xticks(range(len(agree)), agree, fontsize=8)
        axes[1].set_ylim(min(0.0, float(y.min()) - 0.1), 1.05)
    axes[1].set_ylabel("r(per-component DLA, original's)"), axes[1].set_title("DLA agreement with the original", fontsize=9)
    if m.get("recovered") == 0:
        fig.suptitle("not recovered: LN-free CE far above the LN-kept control (schedule too short)", color="tab:red",
                     fontsize=10)
    figs["headline_lnfree"] = fig
    return figs


PHASE_COLOURS = {"mlp": "tab:green", "qk": "tab:purple", "v": "tab:brown", "attn": "tab:purple", "final": "black",
                 "special": "tab:red"}


def _lnfree_curve(curve, schedule):
    """Training loss (and the control's) with each freezing event marked, coloured by phase."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if "loss" in curve:
        ax.plot(curve["step"], curve["loss"], label="norms removed on the schedule")
    if "control_loss" in curve:
        ax.plot(curve["step"], curve["control_loss"], alpha=0.7, label="control: norms kept")
    seen = set()
    for row in schedule.itertuples():
        label = None if row.phase in seen else f"event: {row.phase}"
        seen.add(row.phase)
        ax.axvline(row.step, color=PHASE_COLOURS.get(row.phase, "grey"), lw=0.6, alpha=0.6, label=label)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("step"), ax.set_ylabel("train CE (nats/token)")
    ax.set_title("norm removal fine-tuning (lines: freezing events)")
    if "position0_ratio" in curve and curve["position0_ratio"].notna().any():
        twin = ax.twinx()  # what a release of position 0 has to bridge
        twin.plot(curve["step"], curve["position0_ratio"], color="tab:red", ls=":", label="position 0 scale / shared")
        twin.set_yscale("log"), twin.set_ylabel("position 0's scale over the shared one (max over norms)")
        twin.legend(fontsize=7, loc="upper right")
    return fig
