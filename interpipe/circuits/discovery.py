"""From effects to circuits: ranking, selection, faithfulness and overlap across tasks.

Components (every head and MLP) are ranked by the size of their patching effect. The
*faithfulness* of a candidate circuit is the task metric (mean logit difference) with everything
outside it mean-ablated over the reference (corrupted) prompts, divided by the full model's
(Wang et al. 2022). The faithfulness curve of the top-k circuits, k = 0..N, runs as one batched
ablation; on large models (hundreds of heads, one forward per point) it can be sampled at a few
k spaced geometrically (:func:`curve_ks`: dense where circuits are small). A circuit is selected by a threshold on the effect, a fixed k, or as the smallest k
whose faithfulness reaches a target. Circuits of two tasks are compared by the overlap of their
heads, ``|A ∩ B| / |A ∪ B|`` (Merullo et al. 2024 report ~78 % between IOI and Colored Objects
in GPT-2 Medium).

>>> circuit_overlap(["L0H1", "L2H3"], ["L2H3", "L3H0"])
0.3333333333333333
>>> curve_ks(300, 8)
[0, 1, 3, 7, 17, 45, 116, 300]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from interpipe.circuits.ablation import Component, ablate, all_components
from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.metrics import NormalizedLogitDiff

from interpipe.settings.circuits import SELECTIONS  # noqa: E402 - the allowed values live with the settings


@dataclass
class Circuit:
    """A selected set of components with its faithfulness curve."""

    components: list[str]
    ranking: list[tuple[str, float]]  # every component, highest |score| first
    curve: list[float]  # faithfulness of the top-k circuits, k = 0..N
    faithfulness: float
    selection: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def heads(self) -> list[str]:
        return [c for c in self.components if "H" in c]


def rank_components(head_scores: torch.Tensor, mlp_scores: torch.Tensor) -> list[tuple[str, float]]:
    """Heads ``[layer, head]`` and MLPs ``[layer]`` ranked by absolute score, highest first."""
    ranked = [(f"L{l}H{h}", float(head_scores[l, h])) for l in range(head_scores.shape[0])
              for h in range(head_scores.shape[1])]
    ranked += [(f"L{l}.mlp", float(mlp_scores[l])) for l in range(mlp_scores.shape[0])]
    return sorted(ranked, key=lambda item: -abs(item[1]))


def curve_ks(n: int, points: int = 0, include: Iterable[int] = ()) -> list[int]:
    """The circuit sizes k of a faithfulness curve over ``n`` components: all of 0..n when ``points``
    is 0, else about ``points`` sizes from 0 to n spaced geometrically, plus ``include``."""
    if points <= 0 or points >= n + 1:
        ks = set(range(n + 1))
    else:
        ratio = n ** (1.0 / max(points - 2, 1))
        ks = {0, n} | {min(n, int(round(ratio ** i))) for i in range(points - 1)}
    return sorted(ks | {min(max(int(k), 0), n) for k in include})


def faithfulness_curve(bridge: Any, batch: PromptBatch, ranking: Sequence[tuple[str, float]], kind: str = "mean",
                       metric: NormalizedLogitDiff | None = None, memory_mb: float = 512.0,
                       ks: Sequence[int] | None = None) -> list[float]:
    """Faithfulness of the top-k components for each k of ``ks`` (default 0..N; the rest ablated), in one batched run."""
    names = [name for name, _ in ranking]
    everything = [c.name for c in all_components(bridge)]
    variants = []
    for k in (range(len(names) + 1) if ks is None else ks):
        keep = set(names[:k])
        variants.append([Component.parse(n) for n in everything if n not in keep])
    out = ablate(bridge, batch, [*variants, []], kind, metric=metric, memory_mb=memory_mb)  # last: nothing ablated
    return (out[:-1, 1] / out[-1, 1]).tolist()


def selected_size(ranking: Sequence[tuple[str, float]], selection: str, threshold: float, top_k: int) -> int | None:
    """The circuit size a ``threshold`` or ``top_k`` selection picks from the ranking alone (None for ``faithfulness``)."""
    if selection not in SELECTIONS:
        raise ValueError(f"circuits.selection={selection!r} is not one of {SELECTIONS}")
    if selection == "threshold":
        return sum(1 for _, score in ranking if abs(score) >= threshold)
    return min(top_k, len(ranking)) if selection == "top_k" else None


def select_circuit(ranking: Sequence[tuple[str, float]], curve: Sequence[float], selection: str = "faithfulness",
                   threshold: float = 0.05, top_k: int = 8, target: float = 0.8,
                   ks: Sequence[int] | None = None) -> Circuit:
    """Pick a circuit from a ranking and its faithfulness curve (measured at sizes ``ks``, default 0..N).

    ``threshold``: components with |score| ≥ threshold; ``top_k``: the first k; ``faithfulness``: the
    smallest measured k whose faithfulness reaches ``target`` (all components if none does).
    """
    ks = list(range(len(curve))) if ks is None else list(ks)
    k = selected_size(ranking, selection, threshold, top_k)
    if k is None:
        k = next((size for size, f in zip(ks, curve) if f >= target), len(ranking))
    if k not in ks:
        raise ValueError(f"the faithfulness curve was not measured at the selected size k={k} (sizes {ks})")
    return Circuit([name for name, _ in ranking[:k]], list(ranking), list(curve), float(curve[ks.index(k)]), selection,
                   {"threshold": threshold, "top_k": top_k, "target": target, "k": k, "curve_k": ks})


def circuit_overlap(a: Iterable[str], b: Iterable[str]) -> float:
    """Heads in common / heads in either (0 when both are empty)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0
