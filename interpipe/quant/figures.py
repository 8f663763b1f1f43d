"""Figures of the quantization study (matplotlib, saved through ``interpipe.io.save_figure``)."""

from __future__ import annotations

import math

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def outlier_channels(calib, summary: pd.DataFrame, n_panels: int = 6):
    """Per-channel min..max at the inputs with the largest outlier ratio (one panel each)."""
    plt = _plt()
    hooks = list(summary.sort_values("outlier_ratio", ascending=False)["hook"][:n_panels])
    rows = max(1, math.ceil(len(hooks) / 2))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), squeeze=False)
    for ax, hook in zip(axes.flat, hooks):
        st = calib.stats[hook]
        channels = list(range(st.d))
        ax.fill_between(channels, st.min.numpy(), st.max.numpy(), step="mid", alpha=0.6, lw=0)
        top = int(st.absmax.argmax())
        peak = float(st.max[top]) if abs(float(st.max[top])) >= abs(float(st.min[top])) else float(st.min[top])
        ax.annotate(f"channel {top}", (top, peak), fontsize=8, color="C3")
        ax.set_title(hook, fontsize=9)
        ax.set_xlabel("channel", fontsize=8)
        ax.set_ylabel("min..max", fontsize=8)
    for ax in list(axes.flat)[len(hooks):]:
        ax.axis("off")
    fig.suptitle("Per-channel activation range at quantized inputs (calibration tokens)", fontsize=10)
    fig.tight_layout()
    return fig


def outlier_summary(summary: pd.DataFrame):
    """Outlier ratio (max / median channel absmax) and energy share of the top 1 % channels per input."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.28 * len(summary) + 1.5))
    y = list(range(len(summary)))
    a.barh(y, summary["outlier_ratio"])
    a.set_yticks(y, summary["hook"], fontsize=7)
    a.set_xscale("log")
    a.set_xlabel("max / median channel absmax")
    b.barh(y, summary["energy_top1pct"])
    b.set_yticks(y, [""] * len(summary))
    b.set_xlabel("energy share of the top 1 % channels")
    for ax in (a, b):
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def layer_sqnr(frames: dict[str, pd.DataFrame], note: str | None = None):
    """Propagated SQNR (dB) of every quantized linear, one line per setting (``note``: FP weights' origin)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    for name, frame in frames.items():
        ax.plot(range(len(frame)), frame["sqnr_db"], marker=".", label=name)
    first = next(iter(frames.values()))
    ax.set_xticks(range(len(first)), [m.split(".", 1)[-1] if len(first) < 40 else "" for m in first["module"]],
                  rotation=90, fontsize=6)
    ax.set_ylabel("SQNR vs FP model (dB)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if note:
        ax.set_title(f"FP weights: {note}", fontsize=8)
    fig.tight_layout()
    return fig


def end_metrics(frame: pd.DataFrame, metric: str, note: str | None = None):
    """Grouped bars of the headline end-metric delta, methods x bits, with its interval (over calibration
    seeds and held-out examples) as error bars.

    ``note``: where the FP weights came from (SmolLM2: dequantised 4-bit weights).
    """
    plt = _plt()
    bits = list(dict.fromkeys(frame["bits"]))
    methods = list(dict.fromkeys(frame["method"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(bits) + 2), 3.8))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        sub = frame[frame["method"] == method].set_index("bits")
        values = [float(sub.loc[b, metric]) if b in sub.index else float("nan") for b in bits]
        err = None
        if f"{metric}_ci_low" in sub:
            low = [float(sub.loc[b, f"{metric}_ci_low"]) if b in sub.index else float("nan") for b in bits]
            high = [float(sub.loc[b, f"{metric}_ci_high"]) if b in sub.index else float("nan") for b in bits]
            err = [[0.0 if math.isnan(lo) else v - lo for v, lo in zip(values, low)],  # one seed: no bar
                   [0.0 if math.isnan(hi) else hi - v for v, hi in zip(values, high)]]
        ax.bar([j + i * width for j in range(len(bits))], values, width, yerr=err, capsize=2, label=method)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(bits))], bits)
    ax.set_ylabel(f"{metric} ({'FP - quantized' if 'drop' in metric else 'quantized - FP'})")
    if metric.startswith("ppl") and (frame[metric] > 0).all():
        ax.set_yscale("log")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    title = "error bars: 95 % interval over calibration seeds and held-out examples"
    ax.set_title(f"{title}\nFP weights: {note}" if note else title, fontsize=7, wrap=True)
    fig.tight_layout()
    return fig


def massive_activations(tokens: pd.DataFrame, note: str | None = None):
    """Largest |x| at the first token, at delimiters and (median) elsewhere, per quantized input kind."""
    plt = _plt()
    kinds = {"hook_attn_in": "q/k/v input", "hook_mlp_in": "MLP input", "attn.hook_z": "attention out input",
             "mlp.hook_post": "MLP out input"}
    present = [k for k in kinds if tokens["hook"].str.endswith(k).any()]
    fig, axes = plt.subplots(1, max(len(present), 1), figsize=(3.4 * max(len(present), 1), 3.2), squeeze=False)
    for ax, kind in zip(axes.flat, present):
        sub = tokens[tokens["hook"].str.endswith(kind)]
        layer = sub["hook"].str.extract(r"blocks\.(\d+)\.")[0].astype(int)
        for col, label in (("first_token_absmax", "first token"), ("delimiter_absmax", "delimiters"),
                           ("other_absmax_median", "other tokens (median)")):
            ax.plot(layer, sub[col], marker=".", label=label)
        ax.set_yscale("log")
        ax.set_title(kinds[kind], fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
    axes.flat[0].set_ylabel("max |x| over channels")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Massive activations at quantized inputs" + (f" (FP weights: {note})" if note else ""), fontsize=8)
    fig.tight_layout()
    return fig


def frontier(frame: pd.DataFrame, tasks: list[str], chance: float, note: str | None = None):
    """Pairwise accuracy with its interval against bits, one line per method, one panel per task x series
    (weights and activations; activation-only; weight-only), the most bits left; chance and FP dashed.

    ``frame``: one row per setting (``QuantStudyResult.to_frame``) with ``pairwise_acc/<task>`` columns.
    None when no setting quantizes anything (a grid of ``w16a16`` alone has no frontier to draw).
    """
    from interpipe.quant.frontier import SERIES, ordered, series

    tags = {s: ordered({t for t in frame["bits"] if series(t) == s}) for s in SERIES}
    cols = [s for s in SERIES if tags[s]]
    if not cols:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(tasks), len(cols), figsize=(3.6 * len(cols) + 1, 2.8 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        key = f"pairwise_acc/{task}"
        for j, name in enumerate(cols):
            ax, x = axes[i, j], list(range(len(tags[name])))
            for k, method in enumerate(dict.fromkeys(frame["method"])):
                sub = frame[(frame["method"] == method)].set_index("bits")
                if key not in sub:
                    continue
                get = lambda col, t: float(sub.loc[t, col]) if t in sub.index and col in sub else float("nan")  # noqa: E731
                v = [get(key, t) for t in tags[name]]
                lo = [get(f"{key}_ci_low", t) for t in tags[name]]
                hi = [get(f"{key}_ci_high", t) for t in tags[name]]
                err = [[0.0 if math.isnan(a) else b - a for a, b in zip(lo, v)],
                       [0.0 if math.isnan(c) else c - b for c, b in zip(hi, v)]]
                ax.errorbar([p + 0.04 * k for p in x], v, yerr=err, marker="o", ms=3, capsize=2, label=method)
            fp = frame.get(f"fp_{key}")
            if fp is not None and fp.notna().any():
                ax.axhline(float(fp.dropna().iloc[0]), color="k", ls=":", lw=0.8, label="FP")
            ax.axhline(chance, color="C3", ls="--", lw=0.8, label=f"chance ({chance:g})")
            ax.set_xticks(x, tags[name], fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{task}: {name} quantized", fontsize=8)
            if j == 0:
                ax.set_ylabel("pairwise accuracy", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    title = "answer logit above the foil's; error bars: 95 % interval over calibration seeds and prompts"
    fig.suptitle(f"{title}\nFP weights: {note}" if note else title, fontsize=7)
    fig.tight_layout()
    return fig
