"""Attribution patching (Nanda 2023; Syed et al. 2023): a first-order estimate of every patch at once.

Activation patching's effect of replacing activation ``a`` of the target run by its source value
``a'`` is approximated by ``(a' − a) · ∂metric/∂a`` evaluated on the target run: one forward on
the source (cache), one forward and one backward on the target give estimates for every
component and position. The estimate is good for head outputs and poor for the residual stream
and attention patterns, where the metric is far from linear (attention saturation; see AtP*,
Kramár et al. 2024, arXiv 2403.00745). :func:`correlation` reports its agreement with exact
patching.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.engine import capture, run_to_final
from interpipe.circuits.metrics import NormalizedLogitDiff
from interpipe.circuits.patching import ACTIVATIONS, axis_labels, grid_name, result_axes, runs, task_metric
from interpipe.circuits.results import CircuitResult
from interpipe.typing import Tensor, TokenIds

DEFAULT_GRIDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("resid_pre", ("layer", "pos")), ("attn_out", ("layer", "pos")), ("mlp_out", ("layer", "pos")),
    ("z", ("layer", "head")), ("q", ("layer", "head")), ("k", ("layer", "head")), ("v", ("layer", "head")),
    ("pattern", ("layer", "head")),
)


def attribution_patch(bridge: Any, batch: PromptBatch,
                      grids: Sequence[tuple[str, tuple[str, ...]]] = DEFAULT_GRIDS, direction: str = "denoise",
                      metric: NormalizedLogitDiff | None = None, ablation: str | None = None,
                      ablation_values: dict[str, torch.Tensor] | None = None) -> dict[str, CircuitResult]:
    """Attribution-patching estimates of the patched metric for each grid (2 forwards + 1 backward).

    Args:
        grids: ``(activation, axes)`` pairs as in :func:`interpipe.circuits.patching.activation_patch`.
        direction: ``"denoise"`` (clean into corrupted) or ``"noise"``.
        ablation: instead of a patching direction, estimate ablating each cell of the clean run
            (``"mean"``, ``"zero"``, ``"resample"``, the sources of
            :func:`interpipe.circuits.ablation.ablation_sources`): the first-order effect of the
            ablation that scores circuits, so components whose removal breaks the model rank high
            even when clean and corrupted runs share what they carry.
        ablation_values: those sources precomputed, by hook name (computed here when None).

    Returns:
        ``{name: CircuitResult}`` named like the exact patching results (``z_head``, ``resid_pre_pos``,
        ``k_kv_head`` on grouped-query models, ...),
        holding ``baseline + Σ (source − target) · gradient`` per cell.
    """
    from interpipe.circuits.ablation import ablation_sources

    metric = metric or task_metric(bridge, batch)
    target, source, baseline = runs(batch, "noise" if ablation else direction)
    n_layers = bridge.cfg.n_layers
    names = {(act, layer): ACTIVATIONS[act][0].format(layer=layer) for act, _ in grids for layer in range(n_layers)}
    hooks = list(dict.fromkeys(names.values()))
    if ablation:  # replacement values broadcast against the clean run's [batch, ...]
        sources = {h: ablation_values[h] for h in hooks} if ablation_values else ablation_sources(bridge, batch, hooks, ablation)
    else:
        sources, _ = capture(bridge, source, batch.answer_pos, hooks)
    kept, grads = _gradients(bridge, target, batch.answer_pos, metric, hooks)
    results = {}
    for activation, axes in grids:
        axes = tuple("head" if a == "kv_head" else a for a in axes)  # k/v: the head axis holds KV heads
        layers = [_cell_estimates(sources[name], kept[name], grads[name], ACTIVATIONS[activation][1], axes)
                  for name in (names[(activation, layer)] for layer in range(n_layers))]
        values = baseline + torch.stack(layers, 0).detach()  # (layer, ...)
        named = result_axes(bridge, activation, axes)
        name = grid_name(activation, named)
        results[name] = CircuitResult(name, values, named, axis_labels(bridge, batch, named), baseline,
                                      {"activation": activation, "direction": ablation or direction, "method": "attribution",
                                       "n_prompts": batch.size})
    return results


def _gradients(bridge: Any, target: TokenIds, answer_pos: Tensor, metric: NormalizedLogitDiff,
               hooks: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The target run's activation at every hook and the metric's gradient there (zeros where unused)."""
    kept: dict[str, Tensor] = {}

    def keep(name: str) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            kept[name] = act
            return act
        return hook

    with torch.enable_grad():
        logits = run_to_final(bridge, target, [(n, keep(n)) for n in hooks], answer_pos)
        value = metric(logits[None])[0]
        grads = torch.autograd.grad(value, [kept[n] for n in hooks], allow_unused=True)
    return kept, {n: torch.zeros_like(kept[n]) if g is None else g for n, g in zip(hooks, grads)}


def _cell_estimates(source: Tensor, target: Tensor, grad: Tensor, act_axes: tuple[str, ...],
                    axes: tuple[str, ...]) -> Tensor:
    """``Σ (source − target) · gradient`` of one layer's activation, summed over the batch and every
    axis not in ``axes[1:]`` (the grid's axes after ``layer``), in the grid's axis order."""
    prod = ((source - target.detach()) * grad).sum(0)  # (*rest): summed over the batch (broadcast)
    prod = prod.reshape(*prod.shape[:len(act_axes)], -1).sum(-1)  # (*act_axes)
    drop = [i for i, a in enumerate(act_axes) if a not in axes[1:]]
    if drop:
        prod = prod.sum(dim=drop)
    left = [a for a in act_axes if a in axes[1:]]
    return prod.permute([left.index(a) for a in axes[1:]]) if left else prod


def correlation(estimate: CircuitResult, exact: CircuitResult) -> float:
    """Pearson correlation between two results' effects over all cells (NaN-free: 0 for constant grids).

    >>> import torch
    >>> a = CircuitResult("a", torch.tensor([0.0, 1.0, 2.0]), ("layer",))
    >>> round(correlation(a, a), 6)
    1.0
    """
    x, y = estimate.effect().flatten().double(), exact.effect().flatten().double()
    if x.shape != y.shape:
        raise ValueError(f"cannot correlate {estimate.name} {tuple(estimate.values.shape)} with "
                         f"{exact.name} {tuple(exact.values.shape)}")
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    # clipped: two proportional grids can give 1 + 2e-16 in floating point
    return max(-1.0, min(1.0, float((x * y).sum() / denom))) if denom > 0 else 0.0
