"""Scoring circuits as Wang et al. (2022) do, with intervals, a random baseline and a held-out half.

A circuit ``C`` is a set of components drawn from a *pool*: every attention head by default (MLPs and
embeddings are never ablated, as in Wang et al.), heads and MLPs with ``ablate_mlps``. ``F(C)`` is
the logit difference of the clean prompts with every pool component outside ``C`` ablated (the
template-aligned mean over the corrupted distribution, :func:`interpipe.circuits.ablation.aligned_means`).

* **Faithfulness** two ways: the ratio of means ``mean F(C) / mean F(M)`` (Wang et al.) and the
  mean over prompts of the per-prompt normalised logit difference
  ``(F_b(C) − LD_b(corrupted)) / (LD_b(clean) − LD_b(corrupted))``; each with a bootstrap
  interval over prompts (:func:`interpipe.stats.bootstrap`).
* **Random baseline**: ``n_random`` circuits of the same size drawn uniformly from the pool (the
  same number of heads and of MLPs), their ratio-of-means faithfulness, mean and t interval over
  the draws, and the circuit's paired excess over their mean.
* **Selection on one half, report on the other**: the ranking and the circuit size are chosen on
  the selection half: the smallest measured size whose faithfulness interval lies above the
  target; every reported number comes from the held-out half.
* **Completeness and minimality** (Wang et al. §4, with the single-head knockout ``K = {v}``): for
  each circuit head ``v``, ``|F(C \\ v) − F(M \\ v)|`` (small when the circuit behaves like the
  model under the same knockout) and ``F(C) − F(C \\ v)`` (large when ``v`` matters inside ``C``);
  summarised as the largest gap and the smallest effect, in units of the full model's mean ``F(M)``.

Circuits are lists of :class:`~interpipe.components.Component` (a circuit read back from
``circuit.json`` is parsed where it is read).

>>> smallest_above([0, 2, 4], [Interval(0.1, 0.0, 0.2, 8), Interval(0.9, 0.7, 1.0, 8), Interval(1.0, 0.85, 1.1, 8)], 0.8)
4
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from interpipe.circuits.ablation import ablation_sources, all_components, hook_of, patch_of
from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.engine import capture, run_variants
from interpipe.circuits.metrics import logit_diff
from interpipe.components import Component, heads_of
from interpipe.stats import Interval, bootstrap, seed_interval, to_metrics


def pool(bridge: Any, ablate_mlps: bool = False) -> list[Component]:
    """The components a circuit is drawn from and the rest ablated: every head (and every MLP when asked)."""
    return [c for c in all_components(bridge) if c.kind == "head" or ablate_mlps]


@dataclass
class Scorer:
    """Per-prompt logit differences of circuits on one batch (everything in ``pool`` outside the circuit ablated)."""

    bridge: Any
    batch: PromptBatch
    components: list[Component]
    kind: str = "mean"
    memory_mb: float = 512.0
    seed: int = 0
    sources: dict[str, torch.Tensor] | None = None  # precomputed ablation values of the pool's hooks (else computed)
    clean_ld: np.ndarray = field(init=False)  # (batch,) the full model M
    corrupted_ld: np.ndarray = field(init=False)  # (batch,)
    clean_correct: np.ndarray = field(init=False)  # (batch,) the full model's top-1 token is the answer

    def __post_init__(self) -> None:
        b = self.batch
        _, clean = capture(self.bridge, b.clean_tokens, b.answer_pos, [])
        _, corrupted = capture(self.bridge, b.corrupted_tokens, b.answer_pos, [])
        self.clean_ld = logit_diff(clean, b.answer_ids, b.foil_ids).float().cpu().numpy()
        self.corrupted_ld = logit_diff(corrupted, b.answer_ids, b.foil_ids).float().cpu().numpy()
        self.clean_correct = (clean.argmax(-1) == b.answer_ids).float().cpu().numpy()
        if self.sources is None:
            self.sources = ablation_sources(self.bridge, b, sorted({hook_of(c) for c in self.components}), self.kind,
                                            self.seed)

    def run(self, ablated: Sequence[Sequence[Component]]) -> tuple[np.ndarray, np.ndarray]:
        """(logit difference, correct) per prompt ``[variant, batch]`` with each variant's components ablated."""
        b = self.batch

        def metric(logits: torch.Tensor) -> torch.Tensor:  # (variant, batch, d_vocab) -> (variant, 2, batch)
            return torch.stack([logit_diff(logits, b.answer_ids, b.foil_ids),
                                (logits.argmax(-1) == b.answer_ids).float()], 1)

        if not ablated:
            return np.zeros((0, b.size)), np.zeros((0, b.size))
        keys = [frozenset(v) for v in ablated]
        unique = list(dict.fromkeys(keys))  # identical variants (e.g. random draws of the whole pool) run once
        first = [keys.index(k) for k in unique]
        out = run_variants(self.bridge, b.clean_tokens, b.answer_pos, [[patch_of(c) for c in ablated[i]] for i in first],
                           self.sources, metric, self.memory_mb, desc=f"{self.kind} ablation").float().cpu().numpy()
        out = out[[unique.index(k) for k in keys]]  # (variant, 2, batch)
        return out[:, 0], out[:, 1]

    def circuits(self, circuits: Sequence[Sequence[Component]]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` for circuits: everything in the pool outside each is ablated."""
        return self.run([self.outside(circuit) for circuit in circuits])

    def outside(self, circuit: Sequence[Component]) -> list[Component]:
        """The pool's components not in ``circuit`` (the ones its run ablates), in pool order."""
        keep = set(circuit)
        return [c for c in self.components if c not in keep]

    def faithfulness(self, circuit_ld: np.ndarray) -> dict[str, Interval]:
        """Ratio of means and mean per-prompt normalised logit difference, each with its bootstrap interval."""
        return {"faithfulness": bootstrap(circuit_ld, self.clean_ld, statistic=ratio_of_means),
                "faithfulness_per_prompt": bootstrap(normalised(circuit_ld, self.clean_ld, self.corrupted_ld))}


def ratio_of_means(circuit: np.ndarray, full: np.ndarray) -> float:
    """``mean(circuit) / mean(full)``: Wang et al.'s faithfulness of per-prompt logit differences."""
    return float(np.mean(circuit) / np.mean(full))


def normalised(ld: np.ndarray, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """Per-prompt ``(ld − corrupted) / (clean − corrupted)``: 1 = the full model, 0 = the corrupted run."""
    return (ld - corrupted) / (clean - corrupted)


def smallest_above(ks: Sequence[int], intervals: Sequence[Interval], target: float) -> int | None:
    """The smallest size ``k`` whose interval lies above ``target`` (its low end ≥ target); None if none does."""
    return next((k for k, iv in sorted(zip(ks, intervals), key=lambda p: p[0]) if iv.low >= target), None)


def random_circuits(pool: Sequence[Component], size_like: Sequence[Component], n: int, seed: int = 0
                    ) -> list[list[Component]]:
    """``n`` random circuits with as many heads and MLPs as ``size_like``, drawn uniformly from ``pool``."""
    rng = random.Random(seed)
    heads = heads_of(pool)
    mlps = [c for c in pool if c.kind != "head"]
    n_heads = len(heads_of(size_like))
    return [rng.sample(heads, n_heads) + rng.sample(mlps, len(size_like) - n_heads) for _ in range(n)]


def score_heldout(scorer: Scorer, circuit: Sequence[Component], n_random: int, completeness_heads: int = 0,
                  seed: int = 0) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Everything reported about ``circuit`` on the held-out ``scorer``: metrics and the per-head table.

    Metrics (flat): ``faithfulness`` and ``faithfulness_per_prompt`` with intervals,
    ``circuit_accuracy`` with its interval and the full model's ``heldout_accuracy``,
    ``random_faithfulness`` (mean over ``n_random`` same-size draws, t interval over the draws),
    ``excess_over_random`` (paired bootstrap of the circuit's ratio minus the random circuits'), and
    with ``completeness_heads`` > 0 the worst completeness gap and the smallest minimality effect
    over the first ``completeness_heads`` heads of ``circuit``. The table has one row per such head
    (``head``: the component).
    """
    draws = random_circuits(scorer.components, circuit, n_random, seed) if n_random else []
    heads = heads_of(circuit)[:completeness_heads]
    pool_c = scorer.outside(circuit)
    knock = [pool_c + [h] for h in heads] + [[h] for h in heads]
    ld, correct = scorer.run([pool_c] + [scorer.outside(d) for d in draws] + knock)
    circuit_ld, random_ld = ld[0], ld[1: 1 + len(draws)]
    metrics: dict[str, float] = {"heldout_prompts": float(scorer.batch.size), "circuit_size": float(len(circuit)),
                                 "circuit_heads": float(len(heads_of(circuit))),
                                 "pool_size": float(len(scorer.components))}
    for key, iv in scorer.faithfulness(circuit_ld).items():
        metrics.update(to_metrics(key, iv))
    metrics.update(to_metrics("circuit_accuracy", bootstrap(correct[0])))
    metrics["heldout_accuracy"] = float(np.mean(scorer.clean_correct))  # the full model's top-1 accuracy, same prompts
    metrics["heldout_logit_diff"] = float(np.mean(scorer.clean_ld))
    if draws:
        per_draw = [ratio_of_means(r, scorer.clean_ld) for r in random_ld]
        metrics.update(to_metrics("random_faithfulness", seed_interval(per_draw)))
        metrics["random_faithfulness_max"] = float(np.max(per_draw))
        metrics["random_draws"] = float(len(draws))
        metrics.update(to_metrics("excess_over_random", bootstrap(
            circuit_ld, random_ld.mean(0), scorer.clean_ld,
            statistic=lambda c, r, f: (np.mean(c) - np.mean(r)) / np.mean(f))))
    table = []
    f_c = float(np.mean(circuit_ld))
    rest = ld[1 + len(draws):]
    for i, h in enumerate(heads):
        without, model_without = float(np.mean(rest[i])), float(np.mean(rest[len(heads) + i]))
        table.append({"head": h, "circuit_without_head": without, "model_without_head": model_without,
                      "completeness_gap": abs(without - model_without), "minimality": f_c - without})
    if table:
        full = float(np.mean(scorer.clean_ld))
        metrics["completeness_gap_max"] = max(r["completeness_gap"] for r in table) / full
        metrics["minimality_min"] = min(r["minimality"] for r in table) / full
    return metrics, table
