"""The floor and the ceiling of one model's attribution study, task by task.

Before any method runs, every example gets the two references of
:mod:`interpipe.attribution.faithfulness.oracle` under the study's removal operator: the
leave-one-out oracle (each eligible token's exact effect when removed alone, used as a ranking)
and the chance floor (random rankings). Both are AOPCs of the top-k removal drop over
``k = 1..top_k``, as every method's ``comprehensiveness_k``, so
:func:`interpipe.attribution.uncertainty.normalised` can place each method between them.
Written to ``<out>/references/``::

    per_example.csv       example_id, task, target_full, oracle_k, floor_k, oracle_at_<k>, floor_at_<k>,
                          oracle_top_token, oracle_top_effect
    oracle_scores.parquet the oracle's scores (leave-one-out effects) per token, as a method's attributions
    heatmap.png           the oracle's scores on a few examples
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interpipe.attribution.inputs import Batch
from interpipe.attribution.methods import resolve_targets
from interpipe.attribution.model import ScoredModel
from interpipe.attribution.faithfulness import full_probs, references
from interpipe.attribution.result import Attribution
from interpipe.settings.attribute import AttributeSettings
from interpipe.typing import Float, Tensor


@dataclass
class Bounds:
    """Per-example references over the whole batch."""

    oracle: np.ndarray  # (batch,) the oracle's comprehensiveness_k
    floor: np.ndarray  # (batch,) the chance floor's comprehensiveness_k
    oracle_at: np.ndarray  # (k, batch) the oracle's drop at each k
    floor_at: np.ndarray  # (k, batch)
    target_full: np.ndarray  # (batch,) f(x) on the unperturbed input
    loo: Float[Tensor, "batch pos"]  # the oracle's scores: each eligible token's leave-one-out effect
    targets: torch.Tensor  # (batch,) the resolved targets


def full_cached(sm: ScoredModel, sub: Batch, task: str, idx: list[int], targets, chunk: int, cache: dict):
    """:func:`full_probs` of one task's rows, kept in ``cache`` under ``(task, targets, rows)``."""
    key = (task, tuple(targets.tolist()), tuple(idx))
    if key not in cache:
        cache[key] = full_probs(sm, sub, targets, chunk)
    return cache[key]


def compute_bounds(sm: ScoredModel, batch: Batch, s: AttributeSettings, rule: str, token,
                   cache: dict) -> Bounds:
    """The oracle and the floor of every example, one task at a time (perturbed answers kept in ``cache``)."""
    with torch.no_grad():
        targets = resolve_targets(sm, batch.to(sm.device)).cpu()  # classifiers' predicted class, as the methods
    n, k = len(batch), s.top_k
    out = {"oracle": np.full((k, n), np.nan), "floor": np.full((k, n), np.nan), "full": np.full(n, np.nan)}
    loo = torch.zeros(batch.input_ids.shape)  # (batch, pos)
    memo = cache.setdefault("memo", {})
    for task in dict.fromkeys(batch.tasks):
        idx = [r for r in range(n) if batch.tasks[r] == task]
        sub = batch.select(idx)
        full = full_cached(sm, sub, task, idx, targets[idx], s.eval_batch_size, cache)
        ref = references(sm, sub, targets[idx], k, s.floor_draws, s.seed, rule, token, s.eval_batch_size, full, memo)
        out["oracle"][:, idx], out["floor"][:, idx] = ref["oracle"].double().numpy(), ref["floor"].double().numpy()
        out["full"][idx] = full[0].double().cpu().numpy()
        loo[idx, : ref["loo"].shape[1]] = ref["loo"]
    return Bounds(oracle=out["oracle"].mean(0), floor=out["floor"].mean(0), oracle_at=out["oracle"],
                  floor_at=out["floor"], target_full=out["full"], loo=loo, targets=targets)


def write_bounds(bounds: Bounds, batch: Batch, out_dir: Path, heatmap_rows: list[int], info: dict) -> None:
    """``references/per_example.csv``, the oracle's scores and their heatmap."""
    import pandas as pd

    from interpipe.io import save_figure, write_frame

    folder = Path(out_dir) / "references"
    folder.mkdir(parents=True, exist_ok=True)
    top = torch.where(batch.eligible, bounds.loo, float("-inf")).argmax(1)  # (batch,) the oracle's first token
    frame = {"example_id": batch.example_ids, "task": batch.tasks, "target_full": bounds.target_full,
             "oracle_k": bounds.oracle, "floor_k": bounds.floor,
             **{f"oracle_at_{k + 1}": bounds.oracle_at[k] for k in range(len(bounds.oracle_at))},
             **{f"floor_at_{k + 1}": bounds.floor_at[k] for k in range(len(bounds.floor_at))},
             "oracle_top_token": [batch.tokens[b][int(i)] for b, i in enumerate(top)],
             "oracle_top_effect": bounds.loo[torch.arange(len(batch)), top].double().numpy()}
    write_frame(folder / "per_example.csv", pd.DataFrame(frame))
    oracle = Attribution(method="oracle", scores=torch.where(batch.attention_mask.bool(), bounds.loo, 0.0),
                         input_ids=batch.input_ids, attention_mask=batch.attention_mask, target_ids=bounds.targets,
                         example_ids=list(batch.example_ids), tokens=list(batch.tokens), info=dict(info))
    write_frame(folder / "oracle_scores.parquet", oracle.to_frame())
    if heatmap_rows:
        save_figure(oracle.plot(heatmap_rows), folder / "heatmap.png", dpi=100)
