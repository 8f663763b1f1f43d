"""Edge circuits at MIB's budgets and their faithfulness curve, summarised by CPR and CMD.

A circuit at budget ``b`` keeps the ``int(b · E)`` edges of largest ``|score|`` among the ``E``
edges of the graph (MIB's rule; Mueller et al. 2025, ``evaluate_area_under_curve``). Its
faithfulness is MIB's normalisation of mean logit differences over the evaluation prompts,
``f(C) = (m(C) − m(∅)) / (m(N) − m(∅))``, ``∅`` the empty circuit (the corrupted run) and ``N`` the
model (the clean run). The curve runs over the budgets and the whole model (``b = 1``, ``f = 1``):

* **CPR** = ``Σ (b_{i+1} − b_i) (f_i + f_{i+1}) / 2``, the area under ``f`` against the budget (a
  fraction of edges, linear axis), from the smallest budget to 1: higher is better;
* **CMD** = the same area of ``|1 − f|``: 0 is best.

Intervals are percentile bootstraps over the evaluation prompts, every budget resampled together.
Random circuits (same counts, edges drawn uniformly from the graph) give the floor.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from interpipe.circuits.discovery import mib_faithfulness
from interpipe.settings.circuits import EDGE_BUDGETS
from interpipe.stats import LEVEL, N_RESAMPLES, SEED, Interval
from interpipe.typing import Float, Tensor

MIB_BUDGETS = tuple(EDGE_BUDGETS)  # fractions of all edges; 1 (the model) is added


def edge_counts(n_edges: int, budgets: Sequence[float]) -> list[int]:
    """Edges kept at each budget: ``int(b · n_edges)``, as MIB counts them.

    >>> edge_counts(70651, (0.001, 0.5))
    [70, 35325]
    """
    return [int(b * n_edges) for b in budgets]


def top_circuits(scores: Float[Tensor, "receiver sender"], allowed: Tensor, counts: Sequence[int]) -> Tensor:
    """``[len(counts), receiver, sender]`` bool: the ``k`` existing edges of largest ``|score|`` for each ``k``
    (ties broken by edge order)."""
    flat = torch.where(allowed, scores.abs().float(), torch.tensor(-1.0)).flatten()  # (receiver*sender,)
    order = torch.sort(flat, descending=True, stable=True).indices[: int(allowed.sum())]
    return _prefixes(order, counts, allowed.shape)


def random_circuits(allowed: Tensor, counts: Sequence[int], seed: int) -> Tensor:
    """Nested random circuits of ``counts`` edges drawn uniformly from the graph's edges."""
    edges = allowed.flatten().nonzero().flatten()  # (n_edges,)
    order = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(int(seed)))]
    return _prefixes(order, counts, allowed.shape)


def _prefixes(order: Tensor, counts: Sequence[int], shape: torch.Size) -> Tensor:
    out = torch.zeros(len(counts), shape[0] * shape[1], dtype=torch.bool)
    for i, k in enumerate(counts):
        out[i, order[:k]] = True
    return out.reshape(len(counts), *shape)


def areas(budgets: Sequence[float], faithfulness: Sequence[float] | Float[np.ndarray, "size"]) -> tuple[float, float]:
    """(CPR, CMD) of one curve over ``budgets`` plus the model (budget 1, faithfulness 1).

    >>> areas([0.5], [0.5])  # from 0.5 to 1: (0.5 + 1) / 2 · 0.5 and (0.5 + 0) / 2 · 0.5
    (0.375, 0.125)
    """
    x, f = np.asarray([*budgets, 1.0]), np.asarray([*faithfulness, 1.0], dtype=float)  # (budget + 1,)
    trapezoid = lambda y: float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)  # noqa: E731
    return trapezoid(f), trapezoid(np.abs(1.0 - f))


def curve_summary(budgets: Sequence[float], ld: Float[np.ndarray, "size prompt"], empty: Float[np.ndarray, "prompt"],
                  full: Float[np.ndarray, "prompt"], n_resamples: int = N_RESAMPLES, seed: int = SEED
                  ) -> dict[str, Interval]:
    """CPR, CMD and the faithfulness at each budget (``f0``, ``f1``, ...), with percentile bootstrap
    intervals over prompts (every budget resampled together, vectorised).

    Args:
        ld: per-prompt logit differences of each budget's circuit ``[budget, prompt]``.
        empty, full: per-prompt logit differences of the corrupted and the clean run.
    """
    ld, empty, full = (np.asarray(a, dtype=float) for a in (ld, empty, full))
    n = ld.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))  # (resample, prompt)
    f_hat = faithfulness(ld, empty, full)  # (budget,)
    e, m = empty[idx].mean(-1), full[idx].mean(-1)  # (resample,)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ld[:, idx].mean(-1) - e) / (m - e)  # (budget, resample)
    xs = np.asarray([*budgets, 1.0])
    ones = np.ones((1, f.shape[1]))
    trapezoid = lambda y: np.sum((y[1:] + y[:-1]) * np.diff(xs)[:, None], axis=0) / 2  # noqa: E731 - (resample,)
    cpr, cmd = trapezoid(np.vstack([f, ones])), trapezoid(np.abs(1 - np.vstack([f, ones])))
    tail = (1 - LEVEL) / 2 * 100
    iv = lambda estimate, draws: Interval(float(estimate), *(float(np.nanpercentile(draws, q)) for q in (tail, 100 - tail)),
                                          n)  # noqa: E731
    out = dict(zip(("cpr", "cmd"), (iv(a, d) for a, d in zip(areas(budgets, f_hat), (cpr, cmd)))))
    out.update({f"f{i}": iv(f_hat[i], f[i]) for i in range(len(budgets))})
    return out


def faithfulness(ld: Float[np.ndarray, "size prompt"], empty: Float[np.ndarray, "prompt"],
                 full: Float[np.ndarray, "prompt"]) -> Float[np.ndarray, "size"]:
    """MIB's faithfulness of each row's mean logit difference."""
    return mib_faithfulness(np.asarray(ld, dtype=float), np.asarray(empty, dtype=float), np.asarray(full, dtype=float))


def edges_to_reach(counts: Sequence[int], f: Sequence[float], target: float) -> float:
    """Edges a curve needs to reach faithfulness ``target``: linear interpolation between the last
    budget below it and the first at or above it; NaN when no budget reaches it.

    >>> edges_to_reach([10, 100], [0.25, 0.75], 0.5)
    55.0
    """
    for i, (k, value) in enumerate(zip(counts, f)):
        if value >= target:
            if i == 0 or f[i - 1] == value:
                return float(k)
            k0, f0 = counts[i - 1], f[i - 1]
            return float(k0 + (target - f0) / (value - f0) * (k - k0))
    return float("nan")
