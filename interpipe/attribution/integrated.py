"""Integrated gradients (Sundararajan et al. 2017) with its completeness gap measured, and an
adaptive rule that adds steps until the gap is met.

``IG_i = (e_i − b_i) · ∫₀¹ ∇_{e_i} y(b + α (e − b)) dα`` and completeness says
``Σ_i IG_i = y(e) − y(b)``. A fixed quadrature satisfies it only once converged; the
*relative completeness gap* ``|Σ_i IG_i − (y(e) − y(b))| / |y(e) − y(b)|`` says how far it is.

The adaptive rule is a composite Gauss-Legendre quadrature on sub-intervals of [0, 1]. On each
sub-interval ``[a, c]`` the forward values ``y(a), y(c)`` give a *local* completeness check for
free (``Q[a, c]`` must equal ``y(c) − y(a)``); while an example's global gap exceeds the
tolerance, its sub-intervals with the largest local errors (all whose error exceeds their share
``tol · |Δy| · (c − a)``, at least the worst) are bisected. This resolves the sharp transitions
that fixed rules miss (on RMSNorm models the first percent of a zero-baseline path, where the
norm leaves its epsilon regime) and spends nothing where the path is smooth. Each example
records the steps (gradient evaluations) it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interpipe.typing import Float, Int, Tensor

ABS_FLOOR = 1e-4  # an absolute gap below this counts as met (y(e) ≈ y(b) makes the relative gap meaningless)


@dataclass
class Integral:
    """Per-example IG integral ``(batch, pos, d_model)`` and its completeness record."""

    total: Float[Tensor, "batch pos d_model"]  # (e − b) ⊙ ∫ ∇y, not yet reduced over d_model
    f_input: Float[Tensor, "batch"]  # y(e)
    f_baseline: Float[Tensor, "batch"]  # y(b)
    steps: Int[Tensor, "batch"]  # gradient evaluations used

    @property
    def gap(self) -> Float[Tensor, "batch"]:
        """``Σ_i IG_i − (y(e) − y(b))`` (signed)."""
        return self.total.sum((1, 2)) - (self.f_input - self.f_baseline)

    @property
    def relative_gap(self) -> Float[Tensor, "batch"]:
        """``|gap| / |y(e) − y(b)|`` (NaN when y(e) = y(b))."""
        delta = (self.f_input - self.f_baseline).abs()
        return torch.where(delta > 0, self.gap.abs() / delta.clamp_min(1e-30), float("nan"))

    def diagnostics(self) -> dict[str, list[float]]:
        """Per-example lists for the result's record and ``completeness.csv``."""
        return {"f_input": self.f_input.tolist(), "f_baseline": self.f_baseline.tolist(),
                "sum_scores": self.total.sum((1, 2)).tolist(), "completeness_gap": self.gap.abs().tolist(),
                "relative_gap": self.relative_gap.tolist(), "steps": self.steps.tolist()}


def gauss_legendre(a: float, c: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on ``[a, c]``.

    >>> x, w = gauss_legendre(0.0, 1.0, 3); round(float(np.sum(w * x ** 5)), 12) == round(1 / 6, 12)
    True
    """
    nodes, weights = np.polynomial.legendre.leggauss(n)
    half = 0.5 * (c - a)
    return a + half * (1 + nodes), half * weights


class _Path:
    """The straight path ``b + α (e − b)`` of every example, evaluated in chunks."""

    def __init__(self, model_fn, baseline, diff, targets, chunk: int):
        self.model_fn, self.baseline, self.diff, self.targets, self.chunk = model_fn, baseline, diff, targets, chunk

    def _inputs(self, ex: Tensor, alpha: Tensor) -> Tensor:
        return self.baseline[ex] + alpha.to(self.diff.dtype)[:, None, None] * self.diff[ex]  # (rows, pos, d_model)

    def values(self, ex: list[int], alpha: list[float]) -> Tensor:
        """``y(b + α (e − b))`` for each (example, α) row, no gradients."""
        ex_t = torch.tensor(ex, dtype=torch.long, device=self.diff.device)
        al_t = torch.tensor(alpha, dtype=torch.float64, device=self.diff.device)
        out = []
        with torch.no_grad():
            for s in range(0, len(ex), self.chunk):
                e, a = ex_t[s:s + self.chunk], al_t[s:s + self.chunk]
                out.append(self.model_fn(self._inputs(e, a), e).gather(1, self.targets[e, None])[:, 0])
        return torch.cat(out) if out else torch.zeros(0)

    def gradients(self, ex: list[int], alpha: list[float], weight: list[float], slot: list[int],
                  n_slots: int) -> Tensor:
        """``Σ w · (e − b) ⊙ ∇y`` over the (example, α, w) rows of each slot: ``(slot, pos, d_model)``."""
        dev = self.diff.device
        ex_t, slot_t = torch.tensor(ex, dtype=torch.long, device=dev), torch.tensor(slot, dtype=torch.long, device=dev)
        al_t = torch.tensor(alpha, dtype=torch.float64, device=dev)
        w_t = torch.tensor(weight, dtype=self.diff.dtype, device=dev)
        total = torch.zeros((n_slots,) + tuple(self.diff.shape[1:]), dtype=self.diff.dtype, device=dev)
        for s in range(0, len(ex), self.chunk):
            e, a = ex_t[s:s + self.chunk], al_t[s:s + self.chunk]
            x = self._inputs(e, a).requires_grad_(True)
            y = self.model_fn(x, e).gather(1, self.targets[e, None]).sum()
            (grad,) = torch.autograd.grad(y, x)  # (chunk, pos, d_model)
            total.index_add_(0, slot_t[s:s + self.chunk], grad * self.diff[e] * w_t[s:s + self.chunk, None, None])
        return total


def _rule(path: _Path, requests: list[tuple[int, float, float, int]]) -> list[Tensor]:
    """Gauss-Legendre sums on the requested ``(example, a, c)`` intervals, ``n`` nodes each."""
    if not requests:
        return []
    ex, al, wt, slot = [], [], [], []
    for k, (b, a, c, n) in enumerate(requests):
        nodes, weights = gauss_legendre(a, c, n)
        ex += [b] * n
        al += nodes.tolist()
        wt += weights.tolist()
        slot += [k] * n
    return list(path.gradients(ex, al, wt, slot, len(requests)))  # len(requests) x (pos, d_model)


def integrate_fixed(model_fn, baseline, diff, targets, alphas, weights, chunk: int) -> Integral:
    """IG with one fixed quadrature (``alphas, weights`` on [0, 1]) for every example."""
    path = _Path(model_fn, baseline, diff, targets, chunk)
    n = diff.shape[0]
    rows = [(b, a, w) for a, w in zip(alphas, weights) for b in range(n)]  # step-major, as Captum expands
    ex = [r[0] for r in rows]
    total = path.gradients(ex, [r[1] for r in rows], [r[2] for r in rows], ex, n)  # (batch, pos, d_model)
    ends = path.values(list(range(n)) * 2, [0.0] * n + [1.0] * n)
    return Integral(total.detach(), ends[n:], ends[:n], torch.full((n,), len(alphas)))


def integrate_adaptive(model_fn, baseline, diff, targets, nodes: int, tolerance: float, max_steps: int,
                       chunk: int) -> Integral:
    """IG by adaptive composite Gauss-Legendre (see the module docstring).

    ``model_fn(x: (rows, pos, d_model), example index: (rows,)) -> (rows, n_outputs)``.
    """
    path = _Path(model_fn, baseline, diff, targets, chunk)
    n = diff.shape[0]
    ends = path.values(list(range(n)) * 2, [0.0] * n + [1.0] * n)
    f0, f1 = ends[:n].tolist(), ends[n:].tolist()
    first = _rule(path, [(b, 0.0, 1.0, nodes) for b in range(n)])
    # per example: sub-intervals [a, c, y(a), y(c), Q (pos, d_model)]
    parts = [[[0.0, 1.0, f0[b], f1[b], first[b]]] for b in range(n)]
    steps = [nodes] * n
    while True:
        requests, split = [], []
        for b in range(n):
            delta = abs(f1[b] - f0[b])
            gap = abs(sum(float(p[4].sum()) for p in parts[b]) - (f1[b] - f0[b]))
            if gap <= max(tolerance * delta, ABS_FLOOR) or steps[b] + 2 * nodes > max_steps:
                continue
            errs = [abs(float(p[4].sum()) - (p[3] - p[2])) for p in parts[b]]
            order = sorted(range(len(errs)), key=lambda j: -errs[j])
            chosen = [j for j in order if errs[j] > tolerance * delta * (parts[b][j][1] - parts[b][j][0])] or order[:1]
            chosen = chosen[: (max_steps - steps[b]) // (2 * nodes)]
            for j in chosen:
                a, c = parts[b][j][:2]
                split.append((b, j, 0.5 * (a + c)))
                requests += [(b, a, 0.5 * (a + c), nodes), (b, 0.5 * (a + c), c, nodes)]
            steps[b] += 2 * nodes * len(chosen)
        if not split:
            break
        mids = path.values([b for b, _, _ in split], [m for *_, m in split]).tolist()
        sums = _rule(path, requests)
        replaced: dict[int, dict[int, list]] = {}
        for k, ((b, j, m), fm) in enumerate(zip(split, mids)):
            a, c, fa, fc, _ = parts[b][j]
            replaced.setdefault(b, {})[j] = [[a, m, fa, fm, sums[2 * k]], [m, c, fm, fc, sums[2 * k + 1]]]
        for b, new in replaced.items():
            parts[b] = [q for j, p in enumerate(parts[b]) for q in (new[j] if j in new else [p])]
    total = torch.stack([sum(p[4] for p in parts[b]) for b in range(n)])  # (batch, pos, d_model)
    return Integral(total.detach(), ends[n:], ends[:n], torch.tensor(steps))
