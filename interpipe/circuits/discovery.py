"""From effects to circuits: ranking, selection, faithfulness and overlap across tasks.

Components (every head; heads and MLPs when MLPs are ablated too) are ranked by the size of
their patching effect on the selection half of the prompts. The *faithfulness* of a candidate
circuit is scored by :mod:`.scoring` (mean logit difference with the rest of the pool
mean-ablated over the template-aligned corrupted distribution, over the full model's; Wang et
al. 2022), with a bootstrap interval. The curve of the top-k circuits runs as one batched
ablation, at every k or at a few k spaced geometrically (:func:`curve_ks`: dense where circuits
are small). A circuit is selected by a threshold on the effect, a fixed k, or as the smallest
measured k whose faithfulness interval lies above a target. Circuits of two tasks are compared by
the overlap of their heads, ``|A ∩ B| / |A ∪ B|`` (Jaccard) and ``|A ∩ B| / |A|`` (Merullo et al.
2024 report ~78 % of the Colored Objects circuit's heads shared with IOI in GPT-2 Medium).
Components are :class:`~interpipe.components.Component` values throughout; their names are written
only into ``circuit.json`` and the tables.

>>> circuit_overlap([Component.head(0, 1), Component.head(2, 3)], [Component.head(2, 3), Component.head(3, 0)])
0.3333333333333333
>>> curve_ks(300, 8)
[0, 1, 3, 7, 17, 45, 116, 300]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

import torch

from interpipe.circuits.scoring import Scorer, smallest_above
from interpipe.components import Component, heads_of
from interpipe.stats import Interval

from interpipe.settings.circuits import SELECTIONS  # noqa: E402 - the allowed values live with the settings


@dataclass
class Circuit:
    """A selected set of components with its faithfulness curve."""

    components: list[Component]
    ranking: list[tuple[Component, float]]  # every component, highest |score| first
    curve: list[dict[str, float]]  # {k, faithfulness, low, high} of the top-k circuits on the selection half
    faithfulness: float
    selection: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def heads(self) -> list[Component]:
        """The circuit's heads, in ranking order."""
        return heads_of(self.components)

    def to_json(self) -> dict[str, Any]:
        """The circuit as ``circuit.json`` writes it: components by name, the ranking as ``[name, score]`` pairs."""
        return {"components": [c.name for c in self.components], "heads": [c.name for c in self.heads],
                "ranking": [(c.name, score) for c, score in self.ranking], "selection_curve": self.curve,
                "selection": self.selection, **self.info}


def rank_components(head_scores: torch.Tensor, mlp_scores: torch.Tensor | None = None) -> list[tuple[Component, float]]:
    """Heads ``[layer, head]`` (and MLPs ``[layer]`` when given) ranked by absolute score, highest first
    (ties keep the order heads by layer and head, then MLPs by layer)."""
    ranked = [(Component.head(l, h), float(head_scores[l, h])) for l in range(head_scores.shape[0])
              for h in range(head_scores.shape[1])]
    if mlp_scores is not None:
        ranked += [(Component.mlp(l), float(mlp_scores[l])) for l in range(mlp_scores.shape[0])]
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


def faithfulness_curve(scorer: Scorer, ranking: Sequence[tuple[Component, float]], ks: Sequence[int]
                       ) -> list[dict[str, float]]:
    """Faithfulness (ratio of means, with its bootstrap interval) of the top-k circuits for each k of ``ks``, batched."""
    ranked = [c for c, _ in ranking]
    ld, _ = scorer.circuits([ranked[:k] for k in ks])
    points = []
    for k, row in zip(ks, ld):
        iv = scorer.faithfulness(row)["faithfulness"]
        points.append({"k": int(k), "faithfulness": iv.estimate, "low": iv.low, "high": iv.high})
    return points


def selected_size(ranking: Sequence[tuple[Component, float]], selection: str, threshold: float, top_k: int) -> int | None:
    """The circuit size a ``threshold`` or ``top_k`` selection picks from the ranking alone (None for ``faithfulness``)."""
    if selection not in SELECTIONS:
        raise ValueError(f"circuits.selection={selection!r} is not one of {SELECTIONS}")
    if selection == "threshold":
        return sum(1 for _, score in ranking if abs(score) >= threshold)
    return min(top_k, len(ranking)) if selection == "top_k" else None


def select_circuit(scorer: Scorer, ranking: Sequence[tuple[Component, float]], selection: str = "faithfulness",
                   threshold: float = 0.05, top_k: int = 8, target: float = 0.8, points: int = 0) -> Circuit:
    """Pick a circuit from a ranking by its faithfulness on ``scorer``'s prompts (the selection half).

    ``threshold``: components with |score| ≥ threshold; ``top_k``: the first k; ``faithfulness``: the
    smallest measured k whose faithfulness interval lies above ``target`` (all components if none
    does; ``info["target_reached"]`` is 1 only when a circuit smaller than the pool qualified). The curve is measured at :func:`curve_ks` sizes.
    """
    k = selected_size(ranking, selection, threshold, top_k)
    ks = curve_ks(len(ranking), points, [] if k is None else [k])
    curve = faithfulness_curve(scorer, ranking, ks)
    reached = True
    if k is None:
        intervals = [Interval(p["faithfulness"], p["low"], p["high"], scorer.batch.size) for p in curve]
        k = smallest_above(ks, intervals, target)
        k = len(ranking) if k is None else k
        reached = k < len(ranking)  # the whole pool always qualifies (faithfulness 1): reached means a smaller circuit did
    chosen = next(p for p in curve if p["k"] == k)
    return Circuit([c for c, _ in ranking[:k]], list(ranking), curve, chosen["faithfulness"], selection,
                   {"threshold": threshold, "top_k": top_k, "target": target, "k": k, "curve_k": ks,
                    "target_reached": int(reached), "selection_prompts": scorer.batch.size})


def circuit_overlap(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """Heads in common / heads in either (0 when both are empty); heads as components (or as names, both sides alike)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0


def circuit_containment(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """``|A ∩ B| / |A|``: the share of A's heads that B's circuit reuses (0 when A is empty).

    >>> circuit_containment(["L0H1", "L2H3"], ["L2H3", "L3H0", "L4H4"])  # names read back from circuit.json
    0.5
    """
    a, b = set(a), set(b)
    return len(a & b) / len(a) if a else 0.0
