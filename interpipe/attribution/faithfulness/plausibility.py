"""Plausibility against gold cue tokens, and rank agreement between methods.

- Average precision of an example's ranking (eligible tokens, by descending score) against
  its cue tokens; the mean over examples with at least one cue is the mAP.
- Attribution mass on cues: ``softmax(scores over eligible tokens) · cue_mask`` (the paper's
  "dot product" plausibility). A softmax over raw scores depends on each method's scale (a method
  whose scores are 10× larger puts more mass on its top token), so ``standardised`` (the default)
  z-scores each example's eligible scores first: invariant to shift and scale, comparable across
  methods. ``cue_fraction`` (cues / eligible tokens) is the chance level of both.
- Rank agreement: Spearman correlation of two methods' scores over each example's eligible
  tokens, averaged over examples.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def average_precision(scores, relevant) -> float:
    """AP of ranking ``scores`` (descending, ties by position) against boolean ``relevant``.

    >>> average_precision(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([True, False, True]))
    1.0
    >>> round(average_precision(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([True, False, False])), 4)
    0.3333
    """
    order = torch.sort(torch.as_tensor(scores).float(), descending=True, stable=True).indices
    hits = torch.as_tensor(relevant)[order].float()
    if hits.sum() == 0:
        return float("nan")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def plausibility(scores, eligible, cue_mask, cue_mass: str = "softmax") -> dict[str, list[float]]:
    """Per-example ``ap`` (NaN without cues), ``cue_mass`` (``softmax`` or ``standardised``) and ``cue_fraction``."""
    if cue_mass not in ("softmax", "standardised"):
        raise ValueError(f"cue_mass={cue_mass!r} is not one of ('softmax', 'standardised')")
    out: dict[str, list[float]] = {"ap": [], "cue_mass": [], "cue_fraction": []}
    for s, e, c in zip(scores, eligible, cue_mask):
        s_e, c_e = s[e].float(), c[e]
        if cue_mass == "standardised":
            std = s_e.std(unbiased=False) if len(s_e) > 1 else torch.tensor(0.0)
            s_e = (s_e - s_e.mean()) / std if std > 0 else torch.zeros_like(s_e)
        out["ap"].append(average_precision(s_e, c_e))
        out["cue_mass"].append(float((s_e.softmax(0) * c_e.float()).sum()))
        out["cue_fraction"].append(float(c_e.float().mean()))
    return out


def spearman(a, b) -> float:
    """Spearman correlation of two score vectors (average ranks for ties); 0 when one is constant.

    >>> spearman(torch.tensor([1., 2., 3.]), torch.tensor([10., 20., 30.]))
    1.0
    """
    ra, rb = rankdata(np.asarray(a, dtype=float)), rankdata(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_agreement(scores: dict[str, torch.Tensor], eligible):
    """Mean per-example Spearman correlation for every pair of methods (a square DataFrame)."""
    import pandas as pd

    names = list(scores)
    table = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = float(np.mean([spearman(sa[e], sb[e]) for sa, sb, e in zip(scores[a], scores[b], eligible)]))
            table.loc[a, b] = table.loc[b, a] = value
    return table
