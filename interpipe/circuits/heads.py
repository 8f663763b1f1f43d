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

:func:`classify` names a head by these numbers and its OV copy scores (:mod:`.copying`); it is
the one head-class rule of the project: ``ioi_heads.csv``'s ``class`` column, the S-inhibition
receivers (:mod:`.head_classes`) and the head-class comparison under quantization
(:mod:`interpipe.quant_interp.compare`, through :data:`CLASS_SCORES`) all read it. Path patching
into the name movers' queries (S-inhibition) is in :mod:`.inhibition`; :mod:`.head_classes` puts
them together.

>>> row = {"attn_end_io": 0.6, "attn_end_s": 0.27, "direct_effect": 0.68, "attn_s2_s1": 0.0, "attn_s2_s1_next": 0.0}
>>> classify({**row, "copy_score": 1.0, "negative_copy_score": 0.0})  # SmolLM2's L23H0: IO 2.2x S, copies
'name mover'
>>> classify(row)  # no copy score measured: no evidence that it copies, so no mover class
''
"""

from __future__ import annotations

from typing import Any

import torch

from interpipe.circuits.bridge import PromptBatch
from interpipe.circuits.engine import capture
from interpipe.components import Component

ATTENTION = 0.3  # a head "attends" to a token class when it puts this much of its attention there
RATIO = 3.0  # S-attending: this many times more on S than on IO (the movers need only more on IO than on S)
COPYING = 0.5  # a head "copies" (or negatively copies) when the name is in its OV top 5 for half the name positions
# each class and the attention score that defines it (read by interpipe.quant_interp.compare)
CLASS_SCORES = {"name mover": "attn_end_io", "negative name mover": "attn_end_io", "S suppressor": "attn_end_s",
                "S-attending (S-inhibition candidate)": "attn_end_s", "duplicate token": "attn_s2_s1",
                "induction": "attn_s2_s1_next"}


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
    """One row per head: the attention scores above and its direct effect (``direct``: ``[layer, head]``);
    :func:`classify` names it once the copy scores are in (:func:`interpipe.circuits.head_classes.head_classes`).

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
            out.append(row)
    return out


def _copies(score: Any) -> bool:
    """Whether a copy score was measured and reaches :data:`COPYING` (NaN: not measured)."""
    return score is not None and score == score and float(score) >= COPYING


def classify(row: dict[str, Any]) -> str:
    """The IOI class a head's evidence points to ("" when none): Wang et al.'s §3 criteria, made explicit.

    * *name mover*: attends from the end to IO (≥ :data:`ATTENTION`, and more than to S), copies
      (``copy_score`` ≥ :data:`COPYING`) and raises IO − S directly (``direct_effect`` > 0);
    * *negative name mover*: the same attention, negatively copies, lowers IO − S directly;
    * *S suppressor*: attends to S (≥ :data:`ATTENTION`, more than to IO), negatively copies and
      raises IO − S directly: it writes S down at the end (SmolLM2's L23H3), a late head acting on
      the logits, not an S-inhibition head acting through the name movers' queries;
    * *S-attending (S-inhibition candidate)*: attends to S, :data:`RATIO` times more than to IO;
    * *duplicate token* / *induction*: S2 attends to S1 / to the token after S1 (≥ :data:`ATTENTION`).

    The mover classes need a measured copy score: a head outside the ``copy_heads`` of largest
    |direct effect| has none and gets an attention class at most. Wang et al.'s GPT-2 name movers
    attend to IO many times more than to S; SmolLM2's copy with IO only 1.5–2.2x S, so "more than
    to S" is the attention rule here, and the copy score and direct effect carry the rest.
    """
    io, s, effect = row["attn_end_io"], row["attn_end_s"], row["direct_effect"]
    copy, negative = row.get("copy_score"), row.get("negative_copy_score")
    if io >= ATTENTION and io > s:
        if effect > 0 and _copies(copy):
            return "name mover"
        if effect < 0 and _copies(negative):
            return "negative name mover"
    if s >= ATTENTION and s > io and effect > 0 and _copies(negative):
        return "S suppressor"
    if s >= ATTENTION and s >= RATIO * io:
        return "S-attending (S-inhibition candidate)"
    if row["attn_s2_s1"] >= ATTENTION:
        return "duplicate token"
    if row["attn_s2_s1_next"] >= ATTENTION:
        return "induction"
    return ""
