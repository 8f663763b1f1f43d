"""Comparing an FP model's circuit results with its quantized model's: overlap, effects, head classes.

* **Overlap** of the circuit rediscovered in the quantized model (B) with the FP circuit (A), over
  heads: Jaccard ``|A∩B| / |A∪B|`` and containment ``|A∩B| / |A|`` (the share of the FP circuit
  the quantized model still selects), as :func:`interpipe.circuits.discovery.circuit_overlap`, each
  beside what two random head sets of the same sizes give (:func:`interpipe.circuits.discovery.chance_overlap`).
* **Effect correlation**: Pearson's r between the per-head denoising patching effects (z_head) of
  the two models, with a paired bootstrap interval over heads.
* **Head classes** (Wang et al. 2022, :mod:`interpipe.circuits.heads`): for every head the FP
  model puts in a class (name mover, S-attending, duplicate token, induction), its class in the
  quantized model, the attention score that defines the class and its patching effect in both;
  a class *survives* in a head that keeps it; its survival is reported only for a class of enough
  heads (:mod:`.verdict`).

Circuits are :class:`~interpipe.components.Component` values (parsed where ``circuit.json`` is read,
:func:`~interpipe.quant_interp.inputs.read_circuit_run`); the ``component`` names of the head-class
tables (``ioi_heads.csv``) are parsed here, and the tables written back by name.

>>> H = Component.head
>>> overlap([H(0, 1), H(2, 3)], [H(2, 3), H(3, 0), H(4, 4)])
{'circuit_jaccard': 0.25, 'circuit_containment': 0.5, 'circuit_shared_heads': 1.0}
>>> round(pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])), 4)
0.9934
"""

from __future__ import annotations

from typing import Any

import numpy as np

from interpipe.circuits.discovery import chance_overlap, circuit_containment, circuit_overlap
from interpipe.circuits.heads import CLASS_SCORES  # the one head-class rule: each class and its defining attention score
from interpipe.components import Component
from interpipe.quant_interp.verdict import small_class_reason, undefined_interval
from interpipe.stats import Interval, bootstrap


def overlap(fp: list[Component], quantized: list[Component]) -> dict[str, float]:
    """Jaccard, containment (share of the FP heads kept) and the number of heads shared."""
    return {"circuit_jaccard": circuit_overlap(fp, quantized),
            "circuit_containment": circuit_containment(fp, quantized),
            "circuit_shared_heads": float(len(set(fp) & set(quantized)))}


def overlap_chance(fp: list[Component], quantized: list[Component], n_heads: int) -> dict[str, float]:
    """Expected Jaccard and containment of two random sets of ``n_heads`` heads with the circuits' sizes."""
    chance = chance_overlap(len(set(fp)), len(set(quantized)), n_heads)
    return {"circuit_jaccard_chance": chance["jaccard"], "circuit_containment_chance": chance["containment"]}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r (NaN when either side is constant)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def paired_effects(fp_effects: Any, quantized_effects: Any) -> Any:
    """The per-head effects of both models side by side (``effect_fp``, ``effect_quantized``), by (layer, head)."""
    merged = fp_effects.merge(quantized_effects, on=["layer", "head"], suffixes=("_fp", "_quantized"), how="inner")
    if len(merged) != len(fp_effects) or len(merged) != len(quantized_effects):
        raise ValueError(f"the FP and quantized models' z_head effects cover different heads ({len(fp_effects)} vs "
                         f"{len(quantized_effects)}, {len(merged)} shared): they must have the same layers and heads")
    return merged.sort_values(["layer", "head"]).reset_index(drop=True)


def effect_correlation(paired: Any, n_resamples: int) -> Interval:
    """Pearson's r of the FP vs quantized per-head effects, paired bootstrap interval over heads
    (NaN when either model's task was unsolved, so its effects were never patched)."""
    if paired[["effect_fp", "effect_quantized"]].isna().any().any():
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    return bootstrap(paired["effect_fp"].to_numpy(), paired["effect_quantized"].to_numpy(), statistic=pearson,
                     n_resamples=n_resamples)


def head_class_table(fp_classes: Any, quantized_classes: Any, paired: Any, fp_heads: list[Component],
                     quantized_heads: list[Component]) -> Any:
    """One row per head the FP model classes: its class, defining score and effect, FP vs quantized."""
    import pandas as pd

    q = quantized_classes.set_index("component")
    effects = {Component.head(r.layer, r.head): (r.effect_fp, r.effect_quantized) for r in paired.itertuples()}
    fp_circuit, quantized_circuit = set(fp_heads), set(quantized_heads)
    rows = []
    for r in fp_classes[fp_classes["class"] != ""].to_dict("records"):
        head, score, theirs = Component.parse(r["component"]), CLASS_SCORES.get(r["class"]), q.loc[r["component"]]
        rows.append({"component": head.name, "class_fp": r["class"], "class_quantized": theirs["class"],
                     "survives": int(theirs["class"] == r["class"]), "score": score,
                     "score_fp": float(r[score]), "score_quantized": float(theirs[score]),
                     "direct_effect_fp": float(r["direct_effect"]),
                     "direct_effect_quantized": float(theirs["direct_effect"]),
                     "effect_fp": effects[head][0], "effect_quantized": effects[head][1],
                     "in_fp_circuit": int(head in fp_circuit), "in_quantized_circuit": int(head in quantized_circuit)})
    return pd.DataFrame(rows, columns=["component", "class_fp", "class_quantized", "survives", "score", "score_fp",
                                       "score_quantized", "direct_effect_fp", "direct_effect_quantized", "effect_fp",
                                       "effect_quantized", "in_fp_circuit", "in_quantized_circuit"])


def class_key(name: str) -> str:
    """``"S-attending (S-inhibition candidate)" -> "S_attending"`` (the circuit study's metric names)."""
    return name.split(" (")[0].replace(" ", "_").replace("-", "_")


def class_survival(table: Any, n_resamples: int, min_heads: int = 2) -> tuple[dict[str, Interval], dict[str, str]]:
    """Per FP head class, the share of its heads that keep the class, bootstrap interval over those heads;
    a class of fewer than ``min_heads`` heads gets a NaN interval and its reason (second dict, by class key)."""
    survival: dict[str, Interval] = {}
    reasons: dict[str, str] = {}
    for name, group in table.groupby("class_fp", sort=True):
        key, reason = class_key(name), small_class_reason(len(group), min_heads)
        if reason:
            survival[key], reasons[key] = undefined_interval(len(group)), reason
        else:
            survival[key] = bootstrap(group["survives"].to_numpy(dtype=float), n_resamples=n_resamples)
    return survival, reasons
