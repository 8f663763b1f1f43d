"""From effects to circuits: ranking, selection, faithfulness and overlap across tasks.

Components (every head; heads and MLPs when MLPs are ablated too) are ranked by the size of
their patching effect on the selection half of the prompts. The *faithfulness* of a candidate
circuit is scored by :mod:`.scoring` (mean logit difference with the rest of the pool
mean-ablated over the template-aligned corrupted distribution, over the full model's; Wang et
al. 2022), with a bootstrap interval. The curve of the top-k circuits runs as one batched
ablation, at every k or at a few k spaced geometrically (:func:`curve_ks`: dense where circuits
are small). A circuit is selected by a threshold on the effect, a fixed k, or as the smallest
measured k whose faithfulness interval lies above a target, refined by bisection between the
last measured size below the target and the first above it (``refine`` more sizes, one batched
ablated forward each), so the selected size is not a grid point by construction.

The curve is summarised as MIB does (Mueller et al. 2025, "MIB: A Mechanistic Interpretability
Benchmark"): with MIB's normalisation ``f(C) = (m(C) − m(∅)) / (m(N) − m(∅))`` (``∅``: every pool
component ablated, ``N``: none) against the circuit's size as a fraction of the pool, **CPR** is
the area under the curve and **CMD** the area between the curve and 1 (of ``|1 − f|``), both by
the trapezoid rule over the measured sizes (:func:`curve_areas`); both depend on the ablation,
which is stated beside them.

Circuits of two tasks are compared by the overlap of their heads, ``|A ∩ B| / |A ∪ B|`` (Jaccard)
and ``|A ∩ B| / |A|`` (containment; Merullo et al. 2024 report ~78 % of the Colored Objects
circuit's heads shared with IOI in GPT-2 Medium), each beside what two random sets of the same
sizes from the same pool give (:func:`chance_overlap`). Components are
:class:`~interpipe.components.Component` values throughout; their names are written only into
``circuit.json`` and the tables.

>>> circuit_overlap([Component.head(0, 1), Component.head(2, 3)], [Component.head(2, 3), Component.head(3, 0)])
0.3333333333333333
>>> curve_ks(300, 8)
[0, 1, 3, 7, 17, 45, 116, 300]
>>> {k: round(v, 3) for k, v in chance_overlap(88, 88, 270).items()}
{'jaccard': 0.195, 'containment': 0.326}
>>> curve_areas([0, 1, 2, 4], [0.0, 0.5, 1.0, 1.0], 4)  # sizes 0, 1/4, 1/2, 1 of the pool
(0.75, 0.25)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import torch

from interpipe.circuits.scoring import Scorer, smallest_above
from interpipe.components import Component, heads_of
from interpipe.stats import Interval, bootstrap
from interpipe.typing import Float

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
    return _measure(scorer, ranking, ks)[0]


def _measure(scorer: Scorer, ranking: Sequence[tuple[Component, float]], ks: Sequence[int]
             ) -> tuple[list[dict[str, float]], Float[np.ndarray, "size prompt"]]:
    """:func:`faithfulness_curve` and the per-prompt logit differences ``[size, prompt]`` it rests on."""
    ranked = [c for c, _ in ranking]
    ld, _ = scorer.circuits([ranked[:k] for k in ks])  # (size, prompt)
    points = []
    for k, row in zip(ks, ld):
        iv = scorer.faithfulness(row)["faithfulness"]
        points.append({"k": int(k), "faithfulness": iv.estimate, "low": iv.low, "high": iv.high})
    return points, np.asarray(ld, dtype=float).reshape(len(ks), -1)


def refine(scorer: Scorer, ranking: Sequence[tuple[Component, float]], curve: list[dict[str, float]],
           ld: Float[np.ndarray, "size prompt"], target: float, steps: int
           ) -> tuple[list[dict[str, float]], Float[np.ndarray, "refined prompt"]]:
    """Bisect between the largest measured size whose interval stays below ``target`` and the
    smallest above it, ``steps`` times at most (one ablated forward each); the curve and its
    per-prompt logit differences with the new sizes, sorted by size."""
    for _ in range(steps):
        passing = [p["k"] for p in curve if p["low"] >= target]
        if not passing:
            break
        above = min(passing)
        below = max((p["k"] for p in curve if p["k"] < above), default=None)
        if below is None or above - below <= 1:
            break
        point, row = _measure(scorer, ranking, [(above + below) // 2])
        curve, ld = curve + point, np.concatenate([ld, row])
    order = np.argsort([p["k"] for p in curve], kind="stable")
    return [curve[i] for i in order], ld[order]


def selected_size(ranking: Sequence[tuple[Component, float]], selection: str, threshold: float, top_k: int) -> int | None:
    """The circuit size a ``threshold`` or ``top_k`` selection picks from the ranking alone (None for ``faithfulness``)."""
    if selection not in SELECTIONS:
        raise ValueError(f"circuits.selection={selection!r} is not one of {SELECTIONS}")
    if selection == "threshold":
        return sum(1 for _, score in ranking if abs(score) >= threshold)
    return min(top_k, len(ranking)) if selection == "top_k" else None


def select_circuit(scorer: Scorer, ranking: Sequence[tuple[Component, float]], selection: str = "faithfulness",
                   threshold: float = 0.05, top_k: int = 8, target: float = 0.8, points: int = 0,
                   refine_steps: int = 0) -> Circuit:
    """Pick a circuit from a ranking by its faithfulness on ``scorer``'s prompts (the selection half).

    ``threshold``: components with |score| ≥ threshold; ``top_k``: the first k; ``faithfulness``: the
    smallest measured k whose faithfulness interval lies above ``target`` (all components if none
    does; ``info["target_reached"]`` is 1 only when a circuit smaller than the pool qualified). The
    curve is measured at :func:`curve_ks` sizes, then :func:`refine` d ``refine_steps`` times around
    the target; ``info`` holds its CPR and CMD (:func:`curve_summary`) with their intervals.
    """
    k = selected_size(ranking, selection, threshold, top_k)
    ks = curve_ks(len(ranking), points, [] if k is None else [k])
    curve, ld = _measure(scorer, ranking, ks)
    reached = True
    if k is None:
        curve, ld = refine(scorer, ranking, curve, ld, target, refine_steps)
        intervals = [Interval(p["faithfulness"], p["low"], p["high"], scorer.batch.size) for p in curve]
        k = smallest_above([p["k"] for p in curve], intervals, target)
        k = len(ranking) if k is None else k
        reached = k < len(ranking)  # the whole pool always qualifies (faithfulness 1): reached means a smaller circuit did
    chosen = next(p for p in curve if p["k"] == k)
    areas = {}
    for name, iv in curve_summary([p["k"] for p in curve], ld, scorer.clean_ld, len(ranking)).items():
        areas.update({name: iv.estimate, f"{name}_ci_low": iv.low, f"{name}_ci_high": iv.high})
    return Circuit([c for c, _ in ranking[:k]], list(ranking), curve, chosen["faithfulness"], selection,
                   {"threshold": threshold, "top_k": top_k, "target": target, "k": k, "curve_k": [p["k"] for p in curve],
                    "target_reached": int(reached), "selection_prompts": scorer.batch.size, **areas})


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


def chance_overlap(size_a: int, size_b: int, pool: int) -> dict[str, float]:
    """Expected Jaccard and containment (``|A∩B| / |A|``) of two sets of ``size_a`` and ``size_b``
    heads drawn uniformly and independently from ``pool`` heads: what chance gives an overlap.

    The intersection ``X`` of the two draws is hypergeometric, ``P(X = x) = C(a, x) C(N − a, b − x) / C(N, b)``,
    so ``E[containment] = E[X] / a = b / N`` and ``E[Jaccard] = Σ_x P(X = x) · x / (a + b − x)``, a
    finite sum computed exactly (integers, one division a term). Empty sets overlap 0, as
    :func:`circuit_overlap` and :func:`circuit_containment` say.
    """
    a, b, n = int(size_a), int(size_b), int(pool)
    if not (0 <= a <= n and 0 <= b <= n):
        raise ValueError(f"set sizes {a} and {b} must lie in [0, pool={n}]")
    total = math.comb(n, b)
    jaccard = sum(math.comb(a, x) * math.comb(n - a, b - x) / total * x / (a + b - x)
                  for x in range(max(1, a + b - n), min(a, b) + 1))
    return {"jaccard": float(jaccard), "containment": b / n if a and n else 0.0}


def curve_areas(ks: Sequence[int], faithfulness: Sequence[float] | Float[np.ndarray, "size"], n: int
                ) -> tuple[float, float]:
    """(CPR, CMD) of a faithfulness curve (MIB; Mueller et al. 2025): the areas under ``f`` and of
    ``|1 − f|`` against the circuit size as a fraction ``k / n`` of the pool, by the trapezoid rule
    over the measured sizes (which should include 0 and ``n`` so the areas span [0, 1])."""
    order = np.argsort(np.asarray(ks, dtype=float))
    x = np.asarray(ks, dtype=float)[order] / n  # (size,)
    f = np.asarray(faithfulness, dtype=float)[order]  # (size,)
    area = lambda y: float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)  # noqa: E731 - trapezoid rule
    return area(f), area(np.abs(1.0 - f))


def mib_faithfulness(circuit: Float[np.ndarray, "size prompt"], empty: Float[np.ndarray, "prompt"],
                     full: Float[np.ndarray, "prompt"]) -> Float[np.ndarray, "size"]:
    """MIB's ``(m(C) − m(∅)) / (m(N) − m(∅))`` of mean logit differences; ``circuit``: ``[size, prompt]``."""
    base = float(np.mean(empty))
    return (np.mean(circuit, axis=-1) - base) / (float(np.mean(full)) - base)  # (size,)


def curve_summary(ks: Sequence[int], ld: Float[np.ndarray, "size prompt"], full: Float[np.ndarray, "prompt"], n: int
                  ) -> dict[str, Interval]:
    """CPR and CMD of the top-k curve with bootstrap intervals over prompts (the sizes resampled together).

    Args:
        ks: the measured sizes, including 0 (the empty circuit ``∅``) and ``n`` (the model).
        ld: per-prompt logit differences of each size's circuit ``[size, prompt]``.
        full: the full model's per-prompt logit differences ``[prompt]``.
    """
    ks = list(ks)
    if 0 not in ks or n not in ks:
        raise ValueError(f"CPR/CMD integrate over [0, 1]: the sizes {ks} must include 0 and the pool size {n}")
    empty = ks.index(0)
    areas = lambda *rows: curve_areas(ks, mib_faithfulness(np.stack(rows[:-1]), rows[empty], rows[-1]), n)  # noqa: E731
    samples = [*np.asarray(ld, dtype=float), np.asarray(full, dtype=float)]
    return {"cpr": bootstrap(*samples, statistic=lambda *rows: areas(*rows)[0]),
            "cmd": bootstrap(*samples, statistic=lambda *rows: areas(*rows)[1])}
