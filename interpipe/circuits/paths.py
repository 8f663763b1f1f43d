"""Path patching from a sender head to receiver heads' queries, keys or values (Wang et al. 2022).

The edge sender → receiver is isolated by giving only the receiver's own copy of its input the
sender's changed output: with TransformerLens's per-head Q/K/V input forks
(``use_split_qkv_input``; hooks ``blocks.{L}.attn.hook_{q,k,v}_input``, ``[batch, pos, head,
d_model]`` before ``ln1``), the sender's write difference ``(z_source − z_target)[:, :, h] @ W_O[h]``
is added to one receiver head's q, k or v input while every other reader still sees the target
run. Merullo et al. (2024, "Circuit Component Reuse") restrict the sender's write to the last
position (``sender_positions="answer"``). All receivers of one sender go through the batched
engine together; the result equals ``transformer_lens.patching.get_act_patch_direct_path``.

Grouped-query attention: a receiver's key and value inputs are forked per *KV head*
(``hook_k_input`` is ``[batch, pos, kv_head, d_model]``), so the k and v rows of the result index
KV heads, as the k/v patching grids do (see :mod:`.patching`); their entries from ``n_kv_heads``
on are padding at the baseline (``info["receiver_heads"]`` gives each row's real count).
TransformerBridge does not fork the q/k/v inputs of every family (OPT's attention has no such
hook): there :func:`path_patch` raises :class:`~interpipe.models.arch.UnsupportedArchitecture`
naming the ``model_type``, and :func:`path_patching_support` says so without running anything.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch, architecture, check_head
from interpipe.circuits.engine import Patch, capture, capture_with_cache, run_variants
from interpipe.circuits.metrics import NormalizedLogitDiff
from interpipe.circuits.patching import runs, task_metric
from interpipe.circuits.results import CircuitResult
from interpipe.components import Component
from interpipe.models.arch import UnsupportedArchitecture

COMPONENTS = ("q", "k", "v")
from interpipe.settings.circuits import SENDER_POSITIONS  # noqa: E402 - the allowed values live with the settings


@contextlib.contextmanager
def split_qkv_inputs(bridge: Any) -> Iterator[None]:
    """Enable the per-head Q/K/V input forks for the block, restoring the previous flags."""
    split = bool(getattr(bridge.cfg, "use_split_qkv_input", False))
    attn_in = bool(getattr(bridge.cfg, "use_attn_in", False))
    if attn_in:
        bridge.set_use_attn_in(False)
    try:
        bridge.set_use_split_qkv_input(True)
        yield
    finally:
        if not split:
            with contextlib.suppress(NotImplementedError):
                bridge.set_use_split_qkv_input(False)
        if attn_in:
            bridge.set_use_attn_in(True)


def path_patching_support(bridge: Any) -> str | None:
    """None when the bridge forks every head's q/k/v input, else why path patching cannot run."""
    try:
        with split_qkv_inputs(bridge):
            pass
    except NotImplementedError as exc:
        return (f"path patching needs per-head q/k/v input hooks, which TransformerBridge does not provide for "
                f"model_type={architecture(bridge).model_type!r}: {exc}")
    return None


def path_patch(bridge: Any, batch: PromptBatch, sender: Component,
               components: Sequence[str] = COMPONENTS, direction: str = "denoise",
               sender_positions: str = "all", metric: NormalizedLogitDiff | None = None,
               memory_mb: float = 512.0) -> CircuitResult:
    """Patch the path from the head ``sender`` into every later head's q/k/v input.

    Returns:
        ``[component, layer, head]``: the patched metric; layers up to the sender's are left at
        the baseline (no path exists). Under GQA the k/v rows index KV heads (padded to ``n_heads``).

    Raises:
        UnsupportedArchitecture: the bridge has no per-head q/k/v input hooks for this family.
        ValueError: ``sender`` is not a head of the model.
    """
    if sender.kind != "head":
        raise ValueError(f"path patching needs a sender head, not {sender.name}")
    layer, head = check_head(bridge, sender.layer, sender.index)
    reason = path_patching_support(bridge)
    if reason:
        raise UnsupportedArchitecture(reason)
    for c in components:
        if c not in COMPONENTS:
            raise ValueError(f"component {c!r} is not one of {COMPONENTS}")
    if sender_positions not in SENDER_POSITIONS:
        raise ValueError(f"sender_positions={sender_positions!r} is not one of {SENDER_POSITIONS}")
    metric = metric or task_metric(bridge, batch)
    target, source, baseline = runs(batch, direction)
    z_name = f"blocks.{layer}.attn.hook_z"
    src, _ = capture(bridge, source, batch.answer_pos, [z_name])
    tgt, _, cache = capture_with_cache(bridge, target, batch.answer_pos, [z_name])
    w_o = bridge.blocks[layer].attn.W_O[head].detach()  # (d_head, d_model)
    delta = (src[z_name][:, :, head] - tgt[z_name][:, :, head]) @ w_o  # (batch, pos, d_model)
    if sender_positions == "answer":
        keep = torch.zeros_like(delta[..., :1])
        keep[torch.arange(batch.size), batch.answer_pos] = 1.0
        delta = delta * keep
    spec = architecture(bridge)
    n_layers, n_heads = spec.n_layers, spec.n_heads
    receivers = {c: spec.n_kv_heads if c in ("k", "v") else n_heads for c in components}  # k/v inputs: per KV head
    cells = [(c, dl, dh) for c in components for dl in range(layer + 1, n_layers) for dh in range(receivers[c])]
    values = torch.full((len(components), n_layers, n_heads), float(baseline))  # (component, layer, head)
    if cells:
        sources = {f"blocks.{dl}.attn.hook_{c}_input": delta[:, :, None, :] for c, dl, _ in cells}  # (batch, pos, 1, d_model)
        variants = [[Patch(f"blocks.{dl}.attn.hook_{c}_input", (None, dh), add=True)] for c, dl, dh in cells]
        with split_qkv_inputs(bridge):
            out = run_variants(bridge, target, batch.answer_pos, variants, sources, metric, memory_mb,
                               desc="path patching", prefix=batch.shared_prefix(), prefix_cache=cache)
        for (c, dl, dh), v in zip(cells, out):
            values[components.index(c), dl, dh] = float(v)
    return CircuitResult(f"path_{sender.name}", values, ("component", "layer", "head"),
                         {"component": list(components)}, baseline,
                         {"method": "path", "sender": [layer, head], "direction": direction,
                          "sender_positions": sender_positions, "n_prompts": batch.size,
                          "receiver_heads": [receivers[c] for c in components]})
