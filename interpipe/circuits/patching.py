"""Activation patching (Meng et al. 2022; Wang et al. 2022) on the batched engine.

Patching replaces one activation of a *target* run with its value from a *source* run and
measures how far the metric moves. ``direction="denoise"`` patches clean activations into the
corrupted run (how much of the clean behaviour one component restores); ``"noise"`` patches
corrupted activations into the clean run (how much the clean behaviour depends on it). The
metric is the normalised logit difference (clean = 1, corrupted = 0), so a result's
``baseline`` is 0 when denoising and 1 when noising, and ``effect = values - baseline``.

One generic routine, :func:`activation_patch`, runs any grid; the named wrappers below fix the
activation and the axes (residual stream by layer × position, attention/MLP outputs by layer ×
position, heads over all positions or by position for outputs, q/k/v and patterns). Each equals
the matching ``transformer_lens.patching.get_act_patch_*`` function on the same model and inputs
(tested), but evaluates all cells in a few batched forwards.

Grouped-query attention (Llama, Qwen2, Mistral: fewer key/value heads than query heads). ``z``,
``q`` and ``pattern`` grids have one entry per *query* head. A key/value head is one tensor that
its whole query group reads (query head ``h`` reads KV head ``h // group_size``), so ``k`` and
``v`` grids patch **one KV head**, i.e. the keys or values seen by every query head of its group
at once; patching one query head's copy alone would need the group split. Their grids have
``n_kv_heads`` entries and the axis is named ``kv_head`` (labels ``KV1 (Q3-5)``), and the result is
named ``k_kv_head`` / ``v_kv_head``; on models with as many KV heads as query heads the axis stays
``head``. This is the convention of ``transformer_lens.patching`` (its k/v sweeps run over
``n_key_value_heads``), which the results equal.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from interpipe.circuits.bridge import PromptBatch, architecture
from interpipe.circuits.engine import Patch, capture, run_variants
from interpipe.circuits.metrics import NormalizedLogitDiff, logit_diff
from interpipe.circuits.results import CircuitResult
from interpipe.models.arch import UnsupportedArchitecture

DIRECTIONS = ("denoise", "noise")
# activation -> (hook name template, names of the indexable axes after the batch axis)
ACTIVATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", ("pos",)),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", ("pos",)),
    "attn_out": ("blocks.{layer}.hook_attn_out", ("pos",)),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", ("pos",)),
    "z": ("blocks.{layer}.attn.hook_z", ("pos", "head")),
    "q": ("blocks.{layer}.attn.hook_q", ("pos", "head")),
    "k": ("blocks.{layer}.attn.hook_k", ("pos", "head")),
    "v": ("blocks.{layer}.attn.hook_v", ("pos", "head")),
    "pattern": ("blocks.{layer}.attn.hook_pattern", ("head", "pos")),  # pos: destination (query) position
    "mlp_post": ("blocks.{layer}.mlp.hook_post", ("pos", "neuron")),
}
KV_ACTIVATIONS = ("k", "v")  # one entry per key/value head (fewer than query heads under GQA)


def result_axes(bridge: Any, activation: str, axes: tuple[str, ...]) -> tuple[str, ...]:
    """The axes of a grid's result: the head axis of k/v grids is ``kv_head`` on GQA models."""
    if activation in KV_ACTIVATIONS and architecture(bridge).gqa:
        return tuple("kv_head" if a == "head" else a for a in axes)
    return tuple(axes)


def grid_name(activation: str, axes: tuple[str, ...]) -> str:
    """``z_head``, ``resid_pre_pos``, ``k_kv_head``, ``mlp_out_layer``: the name of a grid's result."""
    return f"{activation}_" + ("_".join(axes[1:]) if len(axes) > 1 else "layer")


def axis_labels(bridge: Any, batch: PromptBatch, axes: tuple[str, ...]) -> dict[str, list[str]]:
    """Tick labels of a result: token positions, and the query group of each KV head."""
    labels = {"pos": batch.position_labels()} if "pos" in axes else {}
    if "kv_head" in axes:
        spec = architecture(bridge)
        size = spec.group_size
        labels["kv_head"] = [f"KV{g} (Q{g * size}-{(g + 1) * size - 1})" for g in range(spec.n_kv_heads)]
    return labels


def task_metric(bridge: Any, batch: PromptBatch) -> NormalizedLogitDiff:
    """The normalised logit-difference metric with the clean and corrupted baselines of ``batch``."""
    _, clean = capture(bridge, batch.clean_tokens, batch.answer_pos, [])
    _, corrupted = capture(bridge, batch.corrupted_tokens, batch.answer_pos, [])
    metric = NormalizedLogitDiff(batch.answer_ids, batch.foil_ids,
                                 clean=float(logit_diff(clean, batch.answer_ids, batch.foil_ids).mean()),
                                 corrupted=float(logit_diff(corrupted, batch.answer_ids, batch.foil_ids).mean()))
    return metric


def runs(batch: PromptBatch, direction: str) -> tuple[Any, Any, float]:
    """(target tokens, source tokens, baseline metric) for a patching direction."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
    if direction == "denoise":
        return batch.corrupted_tokens, batch.clean_tokens, 0.0
    return batch.clean_tokens, batch.corrupted_tokens, 1.0


def _axis_size(bridge: Any, batch: PromptBatch, activation: str, axis: str) -> int:
    spec = architecture(bridge)
    if axis == "layer":
        return spec.n_layers
    if axis == "pos":
        return batch.n_pos
    if axis == "neuron":
        return spec.d_mlp
    return spec.n_kv_heads if activation in KV_ACTIVATIONS else spec.n_heads


@torch.no_grad()
def pattern_patching_support(bridge: Any, tokens: torch.Tensor) -> str | None:
    """None when an edit of ``hook_pattern`` reaches the model's output, else why not.

    Where TransformerBridge delegates attention to the wrapped HF module (OPT), the pattern hook
    only reports the pattern: an edit is discarded, so pattern patching would return the baseline
    everywhere. Probed with two forwards of one short prompt: layer 0's pattern zeroed must change
    the logits.
    """
    probe = tokens[:1, : min(8, tokens.shape[1])]
    before = bridge(probe)
    with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda pattern, hook: pattern * 0.0)]):
        after = bridge(probe)
    if torch.allclose(before, after):
        return (f"pattern patching needs an attention whose pattern hook is used downstream; TransformerBridge "
                f"discards pattern edits for model_type={architecture(bridge).model_type!r}")
    return None


def activation_patch(bridge: Any, batch: PromptBatch, activation: str, axes: tuple[str, ...],
                     direction: str = "denoise", metric: NormalizedLogitDiff | None = None,
                     memory_mb: float = 512.0, progress: bool = False) -> CircuitResult:
    """Patch ``activation`` at every cell of the grid ``axes`` (``("layer", ...)``) in batched forwards.

    Args:
        activation: a key of :data:`ACTIVATIONS` (``resid_pre``, ``attn_out``, ``z``, ``pattern``, ...).
        axes: ``"layer"`` followed by a subset of that activation's axes (``pos``, ``head``), in any order;
            for ``k``/``v`` the head axis indexes KV heads (``kv_head`` is accepted too).
        direction: ``"denoise"`` (clean into corrupted) or ``"noise"`` (corrupted into clean).
        metric: defaults to :func:`task_metric` of ``batch``.

    Returns:
        A :class:`CircuitResult` of shape ``[len(axis) for axis in axes]`` holding the patched metric.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
    if activation == "pattern" and (reason := pattern_patching_support(bridge, batch.clean_tokens)):
        raise UnsupportedArchitecture(reason)
    template, act_axes = ACTIVATIONS[activation]
    axes = tuple("head" if a == "kv_head" and activation in KV_ACTIVATIONS else a for a in axes)
    if not axes or axes[0] != "layer" or any(a not in act_axes for a in axes[1:]) or len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes} must be 'layer' followed by distinct axes of {activation}: {act_axes}")
    metric = metric or task_metric(bridge, batch)
    target, source, nominal = runs(batch, direction)
    sizes = [_axis_size(bridge, batch, activation, a) for a in axes]
    cells = list(itertools.product(*(range(n) for n in sizes)))
    # Positions before the first clean/corrupted difference hold identical activations in both runs:
    # patching one of them alone is an exact no-op, so those cells keep the baseline without a forward.
    shared = batch.shared_prefix() if "pos" in axes else 0
    todo, variants = [], []
    for c, cell in enumerate(cells):
        where = dict(zip(axes, cell))
        if where.get("pos", shared) < shared:
            continue
        todo.append(c)
        variants.append([Patch(template.format(layer=where["layer"]), tuple(where.get(a) for a in act_axes))])
    # The unpatched target run gives the baseline and the value of skipped cells; the normalised
    # metric's baseline is known (0 when denoising, 1 when noising) and needs no run when nothing is skipped.
    measure = len(todo) < len(cells) or not isinstance(metric, NormalizedLogitDiff)
    if measure:
        variants.append([])
    out = run_variants(bridge, target, batch.answer_pos, variants, {}, metric, memory_mb, progress,
                       desc=f"patch {activation}", prefix=batch.shared_prefix(), source_tokens=source).float().cpu()
    baseline = float(out[-1]) if measure else nominal
    values = torch.full((len(cells),), baseline)
    values[todo] = out[: len(todo)]
    named = result_axes(bridge, activation, axes)
    return CircuitResult(grid_name(activation, named), values.reshape(sizes), named, axis_labels(bridge, batch, named), baseline,
                         {"activation": activation, "direction": direction, "hook": template,
                          "n_prompts": batch.size, "method": "exact"})


def patch_resid_pre(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch the residual stream entering each block at each position: ``[layer, pos]``."""
    return activation_patch(bridge, batch, "resid_pre", ("layer", "pos"), **kwargs)


def patch_attn_out(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch each block's attention output (all heads summed) at each position: ``[layer, pos]``."""
    return activation_patch(bridge, batch, "attn_out", ("layer", "pos"), **kwargs)


def patch_mlp_out(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch each block's MLP output at each position: ``[layer, pos]``."""
    return activation_patch(bridge, batch, "mlp_out", ("layer", "pos"), **kwargs)


def patch_head_out_all_pos(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch each head's output (``hook_z``) at every position at once: ``[layer, head]``."""
    return activation_patch(bridge, batch, "z", ("layer", "head"), **kwargs)


def patch_head_out_by_pos(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch each head's output (``hook_z``) at one position at a time: ``[layer, pos, head]``."""
    return activation_patch(bridge, batch, "z", ("layer", "pos", "head"), **kwargs)


def patch_head_qkv_all_pos(bridge: Any, batch: PromptBatch, which: str, **kwargs: Any) -> CircuitResult:
    """Patch each head's query, key or value vectors (``which`` = q|k|v) at all positions: ``[layer, head]``.

    Keys and values are patched per KV head (``[layer, kv_head]`` on grouped-query models: each
    entry changes what the whole query group reads); queries per query head.
    """
    if which not in ("q", "k", "v"):
        raise ValueError(f"which={which!r} must be q, k or v")
    return activation_patch(bridge, batch, which, ("layer", "head"), **kwargs)


def patch_head_qkv_by_pos(bridge: Any, batch: PromptBatch, which: str, **kwargs: Any) -> CircuitResult:
    """Patch each head's query, key or value vector at one position at a time: ``[layer, pos, head]``.

    As :func:`patch_head_qkv_all_pos`: k/v by KV head (``[layer, pos, kv_head]`` under GQA).
    """
    if which not in ("q", "k", "v"):
        raise ValueError(f"which={which!r} must be q, k or v")
    return activation_patch(bridge, batch, which, ("layer", "pos", "head"), **kwargs)


def patch_head_pattern_all_pos(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch each head's whole attention pattern: ``[layer, head]``."""
    return activation_patch(bridge, batch, "pattern", ("layer", "head"), **kwargs)


def patch_head_pattern_by_pos(bridge: Any, batch: PromptBatch, **kwargs: Any) -> CircuitResult:
    """Patch each head's attention pattern row of one destination position: ``[layer, head, pos]``."""
    return activation_patch(bridge, batch, "pattern", ("layer", "head", "pos"), **kwargs)


def clean_into_clean(bridge: Any, batch: PromptBatch, activation: str = "resid_pre",
                     memory_mb: float = 512.0) -> torch.Tensor:
    """Patch clean activations into the clean run at every layer × position (a no-op check).

    Returns the raw mean logit difference per cell minus the unpatched clean one (should be 0).
    """
    template, act_axes = ACTIVATIONS[activation]
    hooks = [template.format(layer=layer) for layer in range(bridge.cfg.n_layers)]
    sources, logits = capture(bridge, batch.clean_tokens, batch.answer_pos, hooks)
    clean = logit_diff(logits, batch.answer_ids, batch.foil_ids).mean()
    variants = [[Patch(h, (p,))] for h in hooks for p in range(batch.n_pos)]
    raw = run_variants(bridge, batch.clean_tokens, batch.answer_pos, variants, sources,
                       lambda lg: logit_diff(lg, batch.answer_ids, batch.foil_ids).mean(-1), memory_mb)
    return (raw - clean).reshape(bridge.cfg.n_layers, batch.n_pos)
