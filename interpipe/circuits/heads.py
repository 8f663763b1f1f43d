"""IOI head classes from attention patterns and direct effects (Wang et al. 2022, §3).

On clean IOI prompts (IO and S are the answer and foil tokens; S occurs twice, S1 and S2), every
head gets, averaged over prompts:

* ``attn_end_io`` / ``attn_end_s``: attention from the final position to IO and to S (both S
  positions); *name movers* attend to IO far more than to S and write IO's logit up;
* ``direct_effect``: its direct logit attribution to IO − S at the final position (from
  :func:`interpipe.circuits.dla.direct_logit_attribution`): positive for name movers, negative for
  negative name movers;
* ``attn_s2_s1``: attention from S2 to S1 (*duplicate-token* heads) and ``attn_s2_s1_next``: from S2
  to the token after S1 (*induction* heads).

:func:`classify` names a head by these numbers; the rules are stated next to it. The OV copy score
is in :mod:`.copying`, path patching into the name movers' queries (S-inhibition) in
:mod:`.inhibition`; :mod:`.head_classes` puts them together.

>>> classify({"attn_end_io": 0.5, "attn_end_s": 0.05, "direct_effect": 0.4, "attn_s2_s1": 0.0, "attn_s2_s1_next": 0.0})
'name mover'
"""

from __future__ import annotations

from typing import Any

import torch

from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.engine import capture
from interpipe.components import Component

ATTENTION = 0.3  # a head "attends" to a token class when it puts this much of its attention there
RATIO = 3.0  # ... and this many times more than to the competing class


def ioi_positions(batch: PromptBatch) -> dict[str, torch.Tensor]:
    """Per prompt, the positions of IO, S1, S2 (answer = IO, foil = S) read from the clean token ids."""
    io, s1, s2 = [], [], []
    for b in range(batch.size):
        n = int(batch.answer_pos[b]) + 1
        tokens = batch.clean_tokens[b, :n]
        at_io = (tokens == batch.answer_ids[b]).nonzero().flatten()
        at_s = (tokens == batch.foil_ids[b]).nonzero().flatten()
        if len(at_io) < 1 or len(at_s) < 2:
            raise ValueError(f"prompt {b} is not an IOI prompt: IO must occur once and S twice in its tokens")
        io.append(int(at_io[0]))
        s1.append(int(at_s[0]))
        s2.append(int(at_s[-1]))
    return {k: torch.tensor(v) for k, v in (("io", io), ("s1", s1), ("s2", s2))}


@torch.no_grad()
def head_evidence(bridge: Any, batch: PromptBatch, direct: torch.Tensor,
                  acts: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """One row per head: the attention scores above and its direct effect (``direct``: ``[layer, head]``).

    ``acts``: a clean-run capture holding every ``blocks.{L}.attn.hook_pattern`` (captured here when None).
    """
    pos = ioi_positions(batch)
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    if acts is None or any(h not in acts for h in hooks):
        acts, _ = capture(bridge, batch.clean_tokens, batch.answer_pos, hooks)
    rows = torch.arange(batch.size, device=batch.answer_pos.device)
    out = []
    for layer in range(n_layers):
        pattern = acts[hooks[layer]].float()  # (batch, head, q_pos, k_pos)
        end = pattern[rows, :, batch.answer_pos]  # (batch, head, k_pos)
        s2 = pattern[rows, :, pos["s2"]]  # (batch, head, k_pos)
        scores = {"attn_end_io": end[rows, :, pos["io"]], "attn_end_s": end[rows, :, pos["s1"]] + end[rows, :, pos["s2"]],
                  "attn_s2_s1": s2[rows, :, pos["s1"]], "attn_s2_s1_next": s2[rows, :, pos["s1"] + 1]}  # each (batch, head)
        for head in range(n_heads):
            row = {"layer": layer, "head": head, "component": Component.head(layer, head).name,
                   **{k: float(v[:, head].mean()) for k, v in scores.items()}, "direct_effect": float(direct[layer, head])}
            row["class"] = classify(row)
            out.append(row)
    return out


def classify(row: dict[str, float]) -> str:
    """The IOI class a head's evidence points to ("" when none): rules of Wang et al.'s §3, made explicit."""
    if row["attn_end_io"] >= ATTENTION and row["attn_end_io"] >= RATIO * row["attn_end_s"]:
        return "name mover" if row["direct_effect"] > 0 else "negative name mover"
    if row["attn_end_s"] >= ATTENTION and row["attn_end_s"] >= RATIO * row["attn_end_io"]:
        return "S-attending (S-inhibition candidate)"
    if row["attn_s2_s1"] >= ATTENTION:
        return "duplicate token"
    if row["attn_s2_s1_next"] >= ATTENTION:
        return "induction"
    return ""
