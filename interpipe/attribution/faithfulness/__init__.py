"""One scorer for every attribution method: faithfulness, plausibility, rank agreement.

:func:`faithfulness_metrics` takes a model, the encoded batch and any method's scores (an
``interpipe.attribution.Attribution``) and returns flat metrics plus per-ratio curves. It only
runs forward passes on perturbed inputs, so scoring time never counts as attribution time.
Metrics follow the NormXLogit paper (Abbasi, Modarres, Pilehvar, EMNLP 2025): comprehensiveness
and sufficiency as AOPC over k = 10..90 %, as confidence drop and as accuracy; soft variants
(Zhao & Aletras 2023); plausibility as mAP and attribution mass on the gold cue tokens. Beside
them, removal of the top k = 1..K tokens (``comprehensiveness_k``, AOPC over k), which the
leave-one-out oracle and the chance floor of :mod:`~interpipe.attribution.faithfulness.oracle`
bound from above and below.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interpipe.attribution.inputs import Batch
from interpipe.attribution.model import ScoredModel
from interpipe.attribution.faithfulness.plausibility import average_precision, plausibility, rank_agreement, spearman
from interpipe.attribution.faithfulness.oracle import chance_floor, leave_one_out, references, top_k_drops
from interpipe.attribution.faithfulness.removal import full_probs, removal_curves, replacement_token, soft_scores, top_k_masks


def _mean(values) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def faithfulness_per_example(sm: ScoredModel, batch: Batch, scores, targets, ratios: list[float], rule: str,
                             token: int | None, seed: int = 0, chunk: int = 256, soft: bool = True, full=None,
                             memo: dict | None = None, soft_normalised: bool = True,
                             cue_mass: str = "standardised", top_k: int = 0,
                             soft_min_drop: float = 1e-6) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per-example metrics ``{metric: (batch,) array}`` (AOPC over ratios) and one curve row per ratio.

    ``rule, token`` come from :func:`replacement_token`; ``full`` may pass :func:`full_probs`
    of the same batch and targets when several methods are scored, and ``memo`` a dict that
    keeps perturbed inputs' answers across calls (identical removals are run once). Examples
    without cues hold NaN in ``plausibility_map``. ``top_k > 0`` adds ``comprehensiveness_k``
    (AOPC over k = 1..top_k) and ``comprehensiveness_at_<k>``; ``soft_min_drop`` is the guard of
    the normalised soft metrics (see :func:`soft_scores`).
    """
    if scores.shape != batch.input_ids.shape:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, inputs {tuple(batch.input_ids.shape)}")
    if not torch.isfinite(torch.where(batch.attention_mask.bool(), scores, 0.0)).all():
        raise ValueError("scores contain NaN/Inf at real tokens; refusing to evaluate them")
    full = full if full is not None else full_probs(sm, batch, targets, chunk)
    r = removal_curves(sm, batch, scores, targets, ratios, rule, token, chunk, full, memo)
    out = {"comprehensiveness": r["comp_drop"].mean(0), "sufficiency": r["suff_drop"].mean(0),
           "comprehensiveness_accuracy": r["comp_acc"].mean(0), "sufficiency_accuracy": r["suff_acc"].mean(0),
           "accuracy_full": r["acc_full"], "target_full": r["p_full"]}  # f(x): p(target) or the logit difference
    if top_k:
        drops = top_k_drops(sm, batch, scores, targets, top_k, rule, token, chunk, full, memo)  # (k, batch)
        out["comprehensiveness_k"] = drops.mean(0)
        out.update({f"comprehensiveness_at_{k + 1}": drops[k] for k in range(top_k)})
    if soft:
        s = soft_scores(sm, batch, scores, targets, seed, chunk, full, normalised=soft_normalised,
                        min_drop=soft_min_drop)
        out["soft_comprehensiveness"], out["soft_sufficiency"] = s["soft_comp_drop"], s["soft_suff_drop"]
    plaus = plausibility(scores, batch.eligible, batch.cue_mask, cue_mass)
    out.update(plausibility_map=plaus["ap"], cue_mass=plaus["cue_mass"], cue_fraction=plaus["cue_fraction"])
    per_example = {k: np.asarray(torch.as_tensor(v, dtype=torch.float64).cpu().numpy(), dtype=float) for k, v in out.items()}
    curve = [{"ratio": k, "comprehensiveness": float(r["comp_drop"][i].mean()),
              "sufficiency": float(r["suff_drop"][i].mean()),
              "comprehensiveness_accuracy": float(r["comp_acc"][i].mean()),
              "sufficiency_accuracy": float(r["suff_acc"][i].mean())} for i, k in enumerate(ratios)]
    return per_example, curve


def faithfulness_metrics(sm: ScoredModel, batch: Batch, scores, targets, ratios: list[float], rule: str,
                         token: int | None, seed: int = 0, chunk: int = 256, soft: bool = True,
                         full=None, memo: dict | None = None, soft_normalised: bool = False,
                         cue_mass: str = "softmax", top_k: int = 0) -> tuple[dict, list[dict]]:
    """Mean metrics and curve of one method's ``scores: (batch, pos)`` for ``targets: (batch,)``.

    The means over examples of :func:`faithfulness_per_example` (raw soft drops and the softmax cue
    mass unless asked otherwise). The mAP is absent when no example has cues.
    """
    per, curve = faithfulness_per_example(sm, batch, scores, targets, ratios, rule, token, seed, chunk, soft, full,
                                          memo, soft_normalised, cue_mass, top_k)
    metrics = {k: _mean(v) for k, v in per.items()}
    if not math.isfinite(metrics["plausibility_map"]):
        del metrics["plausibility_map"]  # left out (not written as NaN) when no example has cues
    metrics["n_examples_with_cues"] = int(np.isfinite(per["plausibility_map"]).sum())
    return metrics, curve


__all__ = ["average_precision", "chance_floor", "faithfulness_metrics", "faithfulness_per_example", "full_probs",
           "leave_one_out", "plausibility", "rank_agreement", "references", "removal_curves", "replacement_token",
           "soft_scores", "spearman", "top_k_drops", "top_k_masks"]
