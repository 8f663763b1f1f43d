"""One evaluator for every attribution method: faithfulness, plausibility, rank agreement.

:func:`evaluate` takes a model, the encoded batch and any method's scores (an
``interpipe.attribution.Attribution``) and returns flat metrics plus per-ratio curves. It only
runs forward passes on perturbed inputs, so evaluation time never counts as attribution time.
Metrics follow the NormXLogit paper (Abbasi, Modarres, Pilehvar, EMNLP 2025): comprehensiveness
and sufficiency as AOPC over k = 10..90 %, as confidence drop and as accuracy; soft variants
(Zhao & Aletras 2023); plausibility as mAP and attribution mass on the gold cue tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interpipe.attribution.inputs import Batch
from interpipe.attribution.model import ScoredModel
from interpipe.faithfulness.plausibility import average_precision, plausibility, rank_agreement, spearman
from interpipe.faithfulness.removal import full_probs, removal_curves, replacement_token, soft_scores, top_k_masks


def _mean(values) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def evaluate(sm: ScoredModel, batch: Batch, scores, targets, ratios: list[float], rule: str,
             token: int | None, seed: int = 0, chunk: int = 256, soft: bool = True,
             full=None, memo: dict | None = None) -> tuple[dict, list[dict]]:
    """Evaluate one method's ``scores: (batch, pos)`` for ``targets: (batch,)``.

    ``rule, token`` come from :func:`replacement_token`; ``full`` may pass :func:`full_probs`
    of the same batch and targets when several methods are evaluated, and ``memo`` a dict that
    keeps perturbed inputs' answers across calls (identical removals are run once). Returns ``(metrics, curve)``: flat
    metrics (AOPC means over ratios and examples) and one row per ratio. Examples whose task
    has no cues are left out of the mAP, which is absent when no example has cues.
    """
    if scores.shape != batch.input_ids.shape:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, inputs {tuple(batch.input_ids.shape)}")
    if not torch.isfinite(torch.where(batch.attention_mask.bool(), scores, 0.0)).all():
        raise ValueError("scores contain NaN/Inf at real tokens; refusing to evaluate them")
    full = full if full is not None else full_probs(sm, batch, targets, chunk)
    r = removal_curves(sm, batch, scores, targets, ratios, rule, token, chunk, full, memo)
    metrics = {
        "comprehensiveness": float(r["comp_drop"].mean()), "sufficiency": float(r["suff_drop"].mean()),
        "comprehensiveness_accuracy": float(r["comp_acc"].mean()), "sufficiency_accuracy": float(r["suff_acc"].mean()),
        "accuracy_full": float(r["acc_full"].mean()), "p_target_full": float(r["p_full"].mean()),
    }
    if soft:
        s = soft_scores(sm, batch, scores, targets, seed, chunk, full)
        metrics["soft_comprehensiveness"] = float(s["soft_comp_drop"].mean())
        metrics["soft_sufficiency"] = float(s["soft_suff_drop"].mean())
    plaus = plausibility(scores, batch.eligible, batch.cue_mask)
    ap = _mean(plaus["ap"])
    if math.isfinite(ap):  # left out (not written as NaN) when no example has cues
        metrics["plausibility_map"] = ap
    metrics["n_examples_with_cues"] = int(sum(math.isfinite(a) for a in plaus["ap"]))
    metrics["cue_mass"] = _mean(plaus["cue_mass"])
    metrics["cue_fraction"] = _mean(plaus["cue_fraction"])
    curve = [{"ratio": k, "comprehensiveness": float(r["comp_drop"][i].mean()),
              "sufficiency": float(r["suff_drop"][i].mean()),
              "comprehensiveness_accuracy": float(r["comp_acc"][i].mean()),
              "sufficiency_accuracy": float(r["suff_acc"][i].mean())} for i, k in enumerate(ratios)]
    return metrics, curve


__all__ = ["average_precision", "evaluate", "full_probs", "plausibility", "rank_agreement", "removal_curves", "replacement_token",
           "soft_scores", "spearman", "top_k_masks"]
