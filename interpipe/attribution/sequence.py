"""Attribute every next-token target of a causal-LM sequence at once.

For a sequence ``t_0 .. t_{T-1}``, target ``j`` is token ``t_{j+1}`` predicted at position
``j``; the result is a ``(T-1, T)`` matrix whose row ``j`` scores the input tokens ``0..j``
(later positions are 0: the model cannot see them). Captum's ``LLMGradientAttribution`` runs
one forward and one backward per target; here

- ``normxlogit`` / ``logat`` / ``norm`` need one forward pass for all targets: LogAt of token
  ``i`` for target ``j`` is ``logits[i, t_{j+1}]`` (the LM head already ran at every position);
- ``saliency`` / ``grad_x_input`` need one forward pass and one *batched* backward pass per
  block of targets (``torch.autograd.grad(..., is_grads_batched=True)`` vectorises the
  vector-Jacobian products), for the target's log-probability as in Captum's LLM attribution.
"""

from __future__ import annotations

import torch

from interpipe.attribution.model import ScoredModel, input_gradients_only
from interpipe.typing import Float, Int, Tensor

SEQUENCE_METHODS = ("normxlogit", "norm", "logat", "saliency", "grad_x_input")


def attribute_positions(sm: ScoredModel, input_ids: Int[Tensor, "pos"], method: str = "normxlogit",
                        norm_source: str = "hidden_states0", block: int = 8) -> Float[Tensor, "target pos"]:
    """Scores of every input token for every next-token target of one sequence, ``(T-1, T)``.

    Gradient methods take the targets in blocks of ``block``: targets ``a..b-1`` run one forward
    on the prefix ``0..b-1`` (a causal LM's later tokens cannot affect them) and one batched
    backward, so no backward pass spends work on positions its target cannot see.
    """
    if block < 1:
        raise ValueError(f"block={block} must be >= 1")
    if sm.kind != "causal_lm":
        raise ValueError("attribute_positions needs a causal LM (every position predicts the next token)")
    if method not in SEQUENCE_METHODS:
        raise ValueError(f"attribute_positions supports {SEQUENCE_METHODS}, not {method!r}")
    ids = input_ids.reshape(1, -1).to(sm.device)  # (1, pos)
    n = ids.shape[1]
    if n < 2:
        raise ValueError("attribute_positions needs at least two tokens (one target)")
    sm.check_length(n)
    mask = torch.ones_like(ids)
    visible = torch.ones(n - 1, n, device=ids.device).tril(diagonal=0).bool()  # row j sees tokens 0..j
    targets = ids[0, 1:]  # (T-1,)
    if method in ("normxlogit", "norm", "logat"):
        with torch.no_grad():
            keep = {"logits_to_keep": 1} if sm.row_head and sm._keep else {}  # skip the (pos, vocab) logits
            out = sm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **keep)
            x0 = out.hidden_states[0] if norm_source == "hidden_states0" else sm.embed(ids)
            norms = x0[0].norm(dim=-1)  # (pos,)
            if sm.row_head:  # h_i · W_U[t_{j+1}] for every (target j, token i)
                logat = sm._head.weight[targets] @ out.hidden_states[-1][0].T  # (T-1, d) @ (d, pos) -> (T-1, pos)
                if sm._head.bias is not None:
                    logat = logat + sm._head.bias[targets][:, None]
            else:
                logat = out.logits[0][:, targets].T  # (pos, vocab)[:, targets] -> (pos, T-1) -> (T-1, pos)
        scores = {"normxlogit": norms[None] * logat, "norm": norms[None].expand(n - 1, n), "logat": logat}[method]
        return torch.where(visible, scores, 0.0).float().cpu()
    embeds = sm.embed(ids).detach()  # (1, pos, d_model)
    grads = torch.zeros(n - 1, n, embeds.shape[-1], dtype=embeds.dtype, device=embeds.device)  # (T-1, pos, d)
    with input_gradients_only(sm.model):
        for a in range(0, n - 1, block):  # targets a..b-1 only see the prefix 0..b-1 (causal)
            b = min(a + block, n - 1)
            x = embeds[:, :b].clone().requires_grad_(True)  # (1, b, d_model)
            logits = sm.model(inputs_embeds=x, attention_mask=mask[:, :b]).logits[0, a:b]  # (b-a, vocab)
            log_probs = logits.log_softmax(-1).gather(1, targets[a:b, None]).squeeze(1)  # (b-a,)
            eye = torch.eye(b - a, device=ids.device, dtype=log_probs.dtype)  # one cotangent per target
            (g,) = torch.autograd.grad(log_probs, x, grad_outputs=eye, is_grads_batched=True)  # (b-a, 1, b, d)
            grads[a:b, :b] = g[:, 0]
    scores = grads.norm(dim=-1) if method == "saliency" else (grads * embeds).sum(-1)  # (T-1, pos)
    return torch.where(visible, scores, 0.0).float().cpu()
