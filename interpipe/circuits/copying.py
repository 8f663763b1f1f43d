"""The OV copy score of attention heads (Wang et al. 2022, "Interpretability in the Wild", §3.3 / App. H).

A name mover copies the name it attends to into the logits. Wang et al. test this on the head's
OV circuit alone: take the residual stream after the first block at the name positions (IO, S1,
S2) of the IOI prompts, apply the head's own input norm, its value and output projections, the
final norm and the unembedding, and count how often the name's own token is among the top 5
logits. The *copy score* of a head is that fraction over (prompt, name position); the *negative*
copy score is the same with the head's output negated (negative name movers write the name's
logit down). Wang et al.'s code normalises with block 1's input norm on a model whose norm
weights are folded into the heads; here each head's own block's input norm (weights included) is
applied, which is the same map on a folded model and the right one on an unfolded one.

Grouped-query attention: query head ``h`` of a layer with ``n_heads`` query and ``n_kv_heads``
KV heads reads the values of KV head ``h // (n_heads // n_kv_heads)`` (Hugging Face's
``repeat_kv`` repeats each KV head for consecutive query heads), so its OV circuit is
``W_V[kv_head(h)] @ W_O[h]``; :func:`kv_head` gives that index.

Ties count against the name: the name is in the top ``k`` when fewer than ``k`` other tokens have
a logit at least as large, so a head whose OV output is zero (all logits equal) scores 0.

>>> kv_head(7, n_heads=9, n_kv_heads=3)
2
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch, architecture, check_head
from interpipe.typing import Float, Tensor

TOP_K = 5  # Wang et al.: the name's token among the top 5 logits
RESID_HOOK = "blocks.0.hook_resid_post"  # the residual stream after the first block: the token's own embedding, mixed once


def kv_head(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The KV head whose values query head ``head`` reads (grouped-query attention; MHA: itself)."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
    return head // (n_heads // n_kv_heads)


def ov_logits(bridge: Any, layer: int, head: int, resid: Float[Tensor, "row d_model"], sign: float = 1.0
              ) -> Float[Tensor, "row d_vocab"]:
    """Logits of the head's OV circuit applied to ``resid``: norm, W_V (+ b_V), W_O, final norm, unembed."""
    layer, head = check_head(bridge, layer, head)
    spec = architecture(bridge)
    attn = bridge.blocks[layer].attn
    kv = kv_head(head, spec.n_heads, spec.n_kv_heads)
    x = bridge.blocks[layer].ln1(resid[:, None, :])[:, 0, :]  # (row, d_model)
    v = x @ attn.W_V[kv].to(x.dtype)  # (row, d_head)
    bias = getattr(attn, "b_V", None)
    if bias is not None:
        v = v + bias[kv].to(x.dtype)
    out = sign * (v @ attn.W_O[head].to(x.dtype))  # (row, d_model)
    return bridge.unembed(bridge.ln_final(out[:, None, :]))[:, 0, :]  # (row, d_vocab)


def in_top_k(logits: Float[Tensor, "row d_vocab"], targets: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """Per row, whether ``targets[row]`` is in the top ``k`` logits (ties count against it)."""
    own = logits.gather(1, targets[:, None])  # (row, 1)
    at_least = (logits >= own).sum(1) - 1  # (row,): other tokens as large as the target
    return at_least < k


def readout_is_odd(bridge: Any) -> bool:
    """Whether final norm + unembedding map −x to minus the logits of x (no biases: RMSNorm, no b_U)."""
    weight = next(bridge.parameters())
    x = torch.randn(2, 1, bridge.cfg.d_model, generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    with torch.no_grad():
        plus, minus = bridge.unembed(bridge.ln_final(x)), bridge.unembed(bridge.ln_final(-x))
    return bool(torch.allclose(minus, -plus, atol=1e-5, rtol=1e-4))


@torch.no_grad()
def copy_scores(bridge: Any, resid: Float[Tensor, "row d_model"], names: torch.Tensor,
                heads: Sequence[tuple[int, int]], k: int = TOP_K) -> dict[tuple[int, int], tuple[float, float]]:
    """(copy score, negative copy score) of each head on residual rows ``resid`` whose names are ``names``.

    Args:
        resid: the residual stream after the first block at name positions ``[row, d_model]``.
        names: the token id of the name at each row ``[row]``.
        heads: ``(layer, head)`` pairs to score.
    """
    out = {}
    odd = readout_is_odd(bridge)  # then the negated head's logits are minus its logits: one projection a head
    for layer, head in heads:
        logits = ov_logits(bridge, layer, head, resid).float()  # (row, d_vocab)
        negated = -logits if odd else ov_logits(bridge, layer, head, resid, -1.0).float()  # (row, d_vocab)
        targets = names.to(logits.device)
        out[(int(layer), int(head))] = (float(in_top_k(logits, targets, k).float().mean()),
                                        float(in_top_k(negated, targets, k).float().mean()))
    return out


def name_rows(batch: PromptBatch, resid: Float[Tensor, "batch pos d_model"], positions: dict[str, torch.Tensor]
              ) -> tuple[Float[Tensor, "row d_model"], torch.Tensor]:
    """The residual rows at IO, S1 and S2 of every prompt and the name token at each (IO, S, S)."""
    rows = torch.arange(batch.size, device=resid.device)
    picked = [resid[rows, positions[p].to(resid.device)] for p in ("io", "s1", "s2")]  # 3 x (batch, d_model)
    names = [batch.answer_ids, batch.foil_ids, batch.foil_ids]
    return torch.cat(picked), torch.cat([n.to(resid.device) for n in names])  # (3*batch, d_model), (3*batch,)
