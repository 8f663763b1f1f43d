"""Direct logit attribution and the logit lens (Elhage et al. 2021; Lieberum et al. 2023; nostalgebraist 2020).

The final residual stream at the answer position is a sum of writes: the token embedding, the
position embedding where positions are *learned* (GPT-2, OPT), every head's output, each layer's
attention output bias, and every MLP output. With rotary positions (GPT-NeoX, Llama, Qwen2) there
is no position write: positions only rotate queries and keys inside attention, so their effect is
carried by the head terms and no ``pos_embed`` term exists. With the final norm's scale *frozen*
at its clean-run value the map from residual to logits is affine (LayerNorm centres first,
RMSNorm does not), so the answer − foil logit difference splits into one term per write plus a
constant (the norm bias and unembedding bias along the logit-difference direction):

    LD = Σ_c  ((c − mean(c)) / scale) · (w ⊙ (W_U[:, answer] − W_U[:, foil]))  +  const  +  error

Head outputs are computed from the per-head mixed values and the output projection,
``result[h] = z[h] @ W_O[h]`` (``blocks.{L}.attn.hook_z`` ``[batch, pos, head, d_head]``,
``W_O`` ``[head, d_head, d_model]``), on every family alike: with grouped-query attention ``z``
still has one entry per *query* head, and no bridge setting (``use_attn_result``) is needed.
``error`` is what the decomposition misses (zero up to float error when the writes add up to the
residual stream); it is reported, not hidden. The logit lens applies the final norm and the
unembedding to the residual stream entering each block.
"""

from __future__ import annotations

from typing import Any

import torch

from interpipe.circuits.bridge import PromptBatch, architecture
from interpipe.circuits.engine import capture
from interpipe.circuits.metrics import accuracy, logit_diff
from interpipe.circuits.results import CircuitResult
from interpipe.components import Component
from interpipe.typing import Float, Tensor


def head_results(bridge: Any, layer: int, z: Float[Tensor, "... head d_head"]) -> Float[Tensor, "... head d_model"]:
    """Each head's write into the residual stream, ``z[..., h, :] @ W_O[h]`` (no output bias)."""
    w_o = bridge.blocks[layer].attn.W_O.detach()  # (head, d_head, d_model)
    return torch.einsum("...hd,hdm->...hm", z, w_o.to(z.dtype))  # (..., head, d_model)


def _final_norm_params(bridge: Any, d_model: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    norm = getattr(bridge.ln_final, "original_component", bridge.ln_final)
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    weight = weight.detach() if weight is not None else torch.ones(d_model, dtype=like.dtype, device=like.device)
    bias = bias.detach() if bias is not None else torch.zeros(d_model, dtype=like.dtype, device=like.device)
    center = getattr(bridge.cfg, "normalization_type", "LN") in ("LN", "LNPre")
    return weight, bias, center


def _frozen_scale(bridge: Any, resid: torch.Tensor) -> torch.Tensor:
    """The final LayerNorm's scale on ``resid`` ``[batch, d_model]``, read from ``ln_final.hook_scale``."""
    store: list[torch.Tensor] = []

    def keep(scale: torch.Tensor, hook: Any) -> torch.Tensor:
        store.append(scale.detach())
        return scale

    with torch.no_grad(), bridge.hooks(fwd_hooks=[("ln_final.hook_scale", keep)]):
        bridge.ln_final(resid[:, None, :])
    if not store:  # a norm without a scale hook (e.g. none at all): identity scale
        return torch.ones(resid.shape[0], 1, dtype=resid.dtype, device=resid.device)
    return store[0][:, 0, :]  # (batch, 1)


def dla_hooks(bridge: Any) -> list[str]:
    """The hooks :func:`direct_logit_attribution` and :func:`logit_lens` read (one capture serves both)."""
    learned = architecture(bridge).pos_embed is not None  # rotary models write no position embedding
    hooks = ["hook_embed", *(["hook_pos_embed"] if learned else []), "ln_final.hook_in"]
    for layer in range(bridge.cfg.n_layers):
        hooks += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out",
                  f"blocks.{layer}.hook_mlp_out"]
    return hooks


def _captured(bridge: Any, batch: PromptBatch, run: str, captured: tuple | None) -> tuple[dict, torch.Tensor]:
    if captured is not None:
        return captured
    tokens = {"clean": batch.clean_tokens, "corrupted": batch.corrupted_tokens}[run]
    return capture(bridge, tokens, batch.answer_pos, dla_hooks(bridge))


def direct_logit_attribution(bridge: Any, batch: PromptBatch, run: str = "clean",
                             captured: tuple[dict, torch.Tensor] | None = None) -> CircuitResult:
    """Each component's direct contribution to the mean answer − foil logit difference.

    Components: ``embed``, ``pos_embed`` (learned positions only), every query head and every MLP
    (by :attr:`~interpipe.components.Component.name`: ``L2H3``, ``L2.mlp``), ``L{l}.attn_bias`` and
    ``const`` (final norm bias and unembedding bias). ``info`` holds the actual
    mean logit difference, the sum of the terms and the ``residual_error`` between them.

    Args:
        run: ``"clean"`` or ``"corrupted"`` prompts.
        captured: ``(activations, answer logits)`` of that run at :func:`dla_hooks`, when already captured.
    """
    acts, logits = _captured(bridge, batch, run, captured)
    with torch.no_grad():
        return _decompose(bridge, batch, acts, logits, run)


def _decompose(bridge: Any, batch: PromptBatch, acts: dict, logits: torch.Tensor, run: str) -> CircuitResult:
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    tokens = batch.clean_tokens
    rows = torch.arange(batch.size, device=tokens.device)
    at = lambda name: acts[name][rows, batch.answer_pos]  # noqa: E731  (batch, ...) at the answer position
    scale = _frozen_scale(bridge, at("ln_final.hook_in"))  # (batch, 1)
    weight, bias, center = _final_norm_params(bridge, bridge.cfg.d_model, scale)
    w_u = bridge.W_U  # (d_model, d_vocab)
    direction = (w_u[:, batch.answer_ids] - w_u[:, batch.foil_ids]).T * weight  # (batch, d_model)
    names, layers, heads, terms = [], [], [], []

    def add(name: str, write: torch.Tensor, layer: int = -1, head: int = -1) -> None:
        if center:
            write = write - write.mean(-1, keepdim=True)
        terms.append(((write / scale) * direction).sum(-1))  # (batch,)
        names.append(name)
        layers.append(layer)
        heads.append(head)

    add("embed", at("hook_embed"))
    if "hook_pos_embed" in acts:
        add("pos_embed", at("hook_pos_embed"))
    for layer in range(n_layers):
        result = head_results(bridge, layer, at(f"blocks.{layer}.attn.hook_z"))  # (batch, head, d_model)
        for head in range(n_heads):
            add(Component.head(layer, head).name, result[:, head], layer, head)
        add(f"L{layer}.attn_bias", at(f"blocks.{layer}.hook_attn_out") - result.sum(1), layer)  # not a component
        add(Component.mlp(layer).name, at(f"blocks.{layer}.hook_mlp_out"), layer)
    b_u = getattr(bridge, "b_U", None)
    const = (bias * (w_u[:, batch.answer_ids] - w_u[:, batch.foil_ids]).T).sum(-1)
    if b_u is not None:
        const = const + b_u[batch.answer_ids] - b_u[batch.foil_ids]
    terms.append(const)
    names.append("const")
    layers.append(-1)
    heads.append(-1)
    per_prompt = torch.stack(terms, 0)  # (component, batch)
    actual = logit_diff(logits, batch.answer_ids, batch.foil_ids)  # (batch,)
    error = actual - per_prompt.sum(0)
    info = {"method": "dla", "direction": run, "run": run, "logit_diff": float(actual.mean()),
            "sum_of_terms": float(per_prompt.sum(0).mean()), "residual_error": float(error.mean()),
            "max_abs_residual_error": float(error.abs().max()), "component_layer": layers, "component_head": heads,
            "n_prompts": batch.size, "positions": architecture(bridge).positions}
    return CircuitResult("dla", per_prompt.mean(1), ("component",), {"component": names}, 0.0, info)


def dla_head_grid(result: CircuitResult, n_layers: int, n_heads: int) -> CircuitResult:
    """The per-head terms of a DLA result as a ``[layer, head]`` grid."""
    grid = torch.zeros(n_layers, n_heads)
    for value, layer, head in zip(result.values, result.info["component_layer"], result.info["component_head"]):
        if head >= 0:
            grid[layer, head] = value
    return CircuitResult("dla_heads", grid, ("layer", "head"), {}, 0.0, {**result.info, "method": "dla"})


def logit_lens(bridge: Any, batch: PromptBatch, run: str = "clean",
               captured: tuple[dict, torch.Tensor] | None = None) -> CircuitResult:
    """Mean logit difference (and accuracy in ``info``) read from the residual stream entering each block.

    Entry ``l`` is the stream entering block ``l``; the last entry is the final stream (the model's output).
    ``captured`` is as in :func:`direct_logit_attribution`.
    """
    n_layers = bridge.cfg.n_layers
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + ["ln_final.hook_in"]
    acts, _ = _captured(bridge, batch, run, captured)
    rows = torch.arange(batch.size, device=batch.answer_pos.device)
    diffs, accs = [], []
    with torch.no_grad():
        for name in hooks:
            resid = acts[name][rows, batch.answer_pos]  # (batch, d_model)
            logits = bridge.unembed(bridge.ln_final(resid[:, None, :]))[:, 0]  # (batch, d_vocab)
            diffs.append(logit_diff(logits, batch.answer_ids, batch.foil_ids).mean())
            accs.append(float(accuracy(logits, batch.answer_ids)))
    labels = [f"L{layer}" for layer in range(n_layers)] + ["final"]
    return CircuitResult("logit_lens", torch.stack(diffs), ("layer",), {"layer": labels}, 0.0,
                         {"method": "logit_lens", "direction": run, "run": run, "accuracy": accs, "n_prompts": batch.size})
