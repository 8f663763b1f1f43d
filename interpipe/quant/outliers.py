"""Outlier analysis at every quantized input: per-channel tables, summaries and plots.

Activation outliers in transformers sit in a few fixed channels (Bondarenko et al. 2021;
Wei et al. 2022/2023): the per-channel absolute maximum of a LayerNorm output is far above the
median channel, the same channels are the largest in almost every example, and a tiny share of
channels carries much of the energy. The summary reports exactly those three things per input:
``outlier_ratio`` (max / median channel absmax), top-k channels with ``top1_stability`` (share of
examples whose largest channel is the global top-1) and ``topk_stability`` (mean share of examples
in which each global top-k channel is among the example's top-k), and ``energy_top1pct``.
"""

from __future__ import annotations

import math

import pandas as pd

from interpipe.quant.calibrate import Calibration


def channel_table(calib: Calibration) -> pd.DataFrame:
    """One row per (input, channel): min, max, absmax, mean, std, kurtosis, energy share, top-k share."""
    frames = []
    for hook, st in calib.stats.items():
        frames.append(pd.DataFrame({
            "hook": hook, "modules": ",".join(calib.modules[hook]), "channel": range(st.d),
            "min": st.min.numpy(), "max": st.max.numpy(), "absmax": st.absmax.numpy(),
            "mean": st.mean.numpy(), "std": st.std.numpy(), "kurtosis": st.kurtosis.numpy(),
            "energy_share": (st.energy / st.energy.sum()).numpy(),
            "topk_share": (st.topk_count / max(st.n_examples, 1)).numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def summary_table(calib: Calibration, top_k: int) -> pd.DataFrame:
    """One row per quantized input with the outlier ratio, top-k channels, stability and energy share."""
    rows = []
    for hook, st in calib.stats.items():
        absmax = st.absmax
        k = min(top_k, st.d)
        top = absmax.topk(k).indices
        n_top1pct = max(1, math.ceil(0.01 * st.d))
        energy = st.energy.sort(descending=True).values
        top1 = int(top[0])
        rows.append({
            "hook": hook, "modules": ",".join(calib.modules[hook]), "d": st.d,
            "absmax_max": float(absmax.max()), "absmax_median": float(absmax.median()),
            "outlier_ratio": float(absmax.max() / absmax.median().clamp(min=1e-12)),
            "top_channels": " ".join(str(int(c)) for c in top),
            "top_absmax": " ".join(f"{float(absmax[c]):.3g}" for c in top),
            "top_min": " ".join(f"{float(st.min[c]):.3g}" for c in top),
            "top_max": " ".join(f"{float(st.max[c]):.3g}" for c in top),
            "top1_stability": sum(1 for c in st.top1 if c == top1) / max(st.n_examples, 1),
            "topk_stability": float((st.topk_count[top] / max(st.n_examples, 1)).mean()),
            "energy_top1pct": float(energy[:n_top1pct].sum() / energy.sum()),
            "kurtosis_max": float(st.kurtosis.max()), "kurtosis_median": float(st.kurtosis.median()),
            "asymmetry_max": float(((st.max + st.min) / 2).abs().max()),
        })
    return pd.DataFrame(rows)


DELIMITERS = frozenset({".", ",", ":", ";", "!", "?", "|", "\n", "-"})  # punctuation tokens that gather massive activations


def delimiter_ids(tokenizer, ids) -> set[int]:
    """The token ids among ``ids`` that decode to a delimiter (punctuation or a newline) alone."""
    out = set()
    for i in {int(t) for t in ids}:
        text = tokenizer.decode([i])
        if text.strip(" ") in DELIMITERS or (text.strip() == "" and "\n" in text):
            out.add(i)
    return out


def token_summary(calib: Calibration, delimiters: set[int]) -> pd.DataFrame:
    """Massive activations per quantized input: the largest |x| over channels at three kinds of token.

    Per input (Sun et al. 2024 find them at the first token and at delimiters): the mean over
    calibration examples of the token absmax at the first token, the mean over delimiter tokens,
    and the median over every other non-padding token; ``*_ratio`` divides by that median.
    """
    import torch

    rows = []
    for hook, st in calib.stats.items():
        if not st.token_absmax:
            continue  # a pooled input (classifier head): no token positions
        absmax = torch.cat([t.reshape(-1) for t in st.token_absmax])  # (n_examples * pos,) padded per batch
        ids = torch.cat([b.input_ids.reshape(-1) for b in calib.batches])
        mask = torch.cat([b.mask.reshape(-1) for b in calib.batches])
        first = torch.cat([torch.nn.functional.one_hot(torch.zeros(b.input_ids.shape[0], dtype=torch.long),
                                                       b.input_ids.shape[1]).bool().reshape(-1) for b in calib.batches])
        delim = mask & ~first & torch.isin(ids, torch.tensor(sorted(delimiters), dtype=ids.dtype))
        other = mask & ~first & ~delim
        median_other = float(absmax[other].median()) if other.any() else float("nan")
        first_v = float(absmax[first & mask].mean())
        delim_v = float(absmax[delim].mean()) if delim.any() else float("nan")
        rows.append({"hook": hook, "modules": ",".join(calib.modules[hook]), "first_token_absmax": first_v,
                     "delimiter_absmax": delim_v, "other_absmax_median": median_other,
                     "first_token_ratio": first_v / max(median_other, 1e-12),
                     "delimiter_ratio": delim_v / max(median_other, 1e-12), "n_delimiters": int(delim.sum())})
    return pd.DataFrame(rows)
