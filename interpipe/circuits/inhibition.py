"""S-inhibition heads: path patching from a sender head into the name movers' queries (Wang et al. 2022, §3.2).

Wang et al. find the S-inhibition heads by patching, for each candidate sender head, only the
path sender → name movers' queries: every name mover's query input gets the sender's output from
the other run, while every other reader of the residual stream (keys, values, later heads, MLPs,
the logits) still sees the unpatched run. A head whose output tells the name movers *not* to
attend to S moves the logit difference a lot along this path; heads with no path to the name
movers' queries move it by exactly nothing.

This reuses the path-patching construction of :mod:`.paths` (the sender's write difference
``(z_source − z_target)[:, :, h] @ W_O[h]`` added to one receiver head's forked q input,
``blocks.{L}.attn.hook_q_input``), with all the name movers as receivers at once. A sender
only reaches the name movers of later layers; a sender with none is left at the baseline. All
senders' z are captured in one clean and one corrupted run; each sender is one batched forward
from the first receiving layer on.

The result is ``[layer, head]`` of the patched metric (the baseline where a head was not a sender);
``info["senders"]`` and ``info["receivers"]`` list the heads used.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch, architecture, check_head
from interpipe.circuits.engine import Patch, capture_with_cache, run_variants
from interpipe.circuits.metrics import NormalizedLogitDiff
from interpipe.circuits.paths import path_patching_support, split_qkv_inputs
from interpipe.circuits.patching import runs, task_metric
from interpipe.circuits.results import CircuitResult
from interpipe.models.arch import UnsupportedArchitecture


def _deltas(bridge: Any, batch: PromptBatch, senders: Sequence[tuple[int, int]], direction: str
            ) -> tuple[dict[tuple[int, int], torch.Tensor], Any]:
    """Per sender, its write difference source − target ``[batch, pos, d_model]``, and the target run's cache."""
    target, source, _ = runs(batch, direction)
    hooks = sorted({f"blocks.{layer}.attn.hook_z" for layer, _ in senders})
    src, _, _ = capture_with_cache(bridge, source, batch.answer_pos, hooks, keep_cache=False)
    tgt, _, cache = capture_with_cache(bridge, target, batch.answer_pos, hooks)
    out = {}
    for layer, head in senders:
        name = f"blocks.{layer}.attn.hook_z"
        w_o = bridge.blocks[layer].attn.W_O[head].detach()  # (d_head, d_model)
        out[(layer, head)] = (src[name][:, :, head] - tgt[name][:, :, head]) @ w_o  # (batch, pos, d_model)
    return out, cache


def s_inhibition_patch(bridge: Any, batch: PromptBatch, senders: Sequence[tuple[int, int]],
                       receivers: Sequence[tuple[int, int]], direction: str = "noise",
                       metric: NormalizedLogitDiff | None = None, memory_mb: float = 512.0) -> CircuitResult:
    """Patch the path from each sender head into the queries of all ``receivers`` (the name movers) together.

    Args:
        senders: candidate ``(layer, head)`` heads, one patched run each.
        receivers: the name movers ``(layer, head)`` whose query inputs receive the sender's output.
        direction: ``noise`` (Wang et al.: corrupted sender output into the clean run) or ``denoise``.

    Returns:
        ``[layer, head]`` metric values; non-senders and senders with no later receiver at the baseline.

    Raises:
        UnsupportedArchitecture: the bridge has no per-head q input hooks for this family.
    """
    senders = [check_head(bridge, *s) for s in senders]
    receivers = [check_head(bridge, *r) for r in receivers]
    reason = path_patching_support(bridge)
    if reason:
        raise UnsupportedArchitecture(reason)
    metric = metric or task_metric(bridge, batch)
    spec = architecture(bridge)
    target, _, baseline = runs(batch, direction)
    values = torch.full((spec.n_layers, spec.n_heads), float(baseline))  # (layer, head)
    reached = [s for s in senders if any(r[0] > s[0] for r in receivers)]
    deltas, cache = _deltas(bridge, batch, reached, direction) if reached else ({}, None)
    with split_qkv_inputs(bridge):
        for sender in reached:
            later = [r for r in receivers if r[0] > sender[0]]
            hooks = sorted({f"blocks.{layer}.attn.hook_q_input" for layer, _ in later})
            sources = {h: deltas[sender][:, :, None, :] for h in hooks}  # (batch, pos, 1, d_model)
            variant = [Patch(f"blocks.{layer}.attn.hook_q_input", (None, head), add=True) for layer, head in later]
            out = run_variants(bridge, target, batch.answer_pos, [variant], sources, metric, memory_mb,
                               desc="S-inhibition", prefix=batch.shared_prefix(), prefix_cache=cache)
            values[sender] = float(out[0])
    return CircuitResult("s_inhibition_path", values, ("layer", "head"), baseline=float(baseline),
                         info={"method": "path", "direction": direction, "n_prompts": batch.size,
                               "senders": [list(s) for s in senders], "receivers": [list(r) for r in receivers],
                               "receiver_input": "q"})
