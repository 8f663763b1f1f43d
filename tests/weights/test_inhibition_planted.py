"""The inhibition score's sign on a hand-built model with a planted inhibition mechanism.

A two-layer, one-head GPT-2 whose residual stream holds one-hot tokens and positions:

- layer 0 (the sender) is a duplicate-token head: each position attends to an earlier copy of its
  own token (else to the BOS sink) and writes a marker direction when that copy is an item word, so
  the second mentions of the repeated items (where they are taken out) carry the marker;
- layer 1 (the receiver) attends from the final position to item words, and ``gamma`` times the
  marker lowers (``gamma > 0``: inhibition) or raises (``gamma < 0``) the attention a key gets.

Removing the sender's OV component must then *raise* the receiver's attention to the repeated items'
mentions when ``gamma > 0`` (positive inhibition score) and lower it when ``gamma < 0``. The
mechanism acts on the second mentions, so the first-mention-only score sees only part of it.
"""

from __future__ import annotations

import random

import pytest
import torch

from interpipe.components import Component


def planted_model(tokenizer, gamma: float):
    """The hand-built model (GPT-2 architecture, MLPs zeroed) described in the module docstring."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.data import vocab

    V, P = len(tokenizer), 64
    TOK, POS, MARK, ITEM = 0, V, V + P, V + P + 1  # residual layout: tokens, positions, marker, item flag
    d = V + P + 2
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=d, n_layer=2, n_head=1, n_inner=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    items = [i for w in vocab.OBJECTS for i in tokenizer(w, add_special_tokens=False)["input_ids"][:1]]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in (*(m for b in model.transformer.h for m in (b.ln_1, b.ln_2)), model.transformer.ln_f):
            ln.weight.fill_(1.0)
        model.transformer.wte.weight[:, TOK:TOK + V] = torch.eye(V)
        model.transformer.wte.weight[items, ITEM] = 1.0
        model.transformer.wpe.weight[:, POS:POS + P] = torch.eye(P)
        # layer 0: W_Q, W_K, W_V stacked in c_attn (d_model, 3 d_model), Conv1D (in, out)
        a0 = model.transformer.h[0].attn.c_attn
        q, k, v = (slice(i * d, (i + 1) * d) for i in range(3))
        tok, pos = slice(TOK, TOK + V), slice(POS, POS + P)
        a0.weight[tok, q][range(V), range(V)] = 1.0  # query: own token
        a0.weight[tok, k][range(V), range(V)] = 1.0  # key: same token -> high score
        a0.weight[pos, q][range(P), range(P)] = 1.0
        a0.weight[pos, k][range(P), range(P)] = -3.0  # ... but not itself
        a0.bias[q.start + ITEM] = 1.0  # a constant query part that matches the BOS sink's key
        a0.weight[POS + 0, k.start + ITEM] = 6.0  # position 0 (BOS) is the sink (below a duplicate's score)
        a0.weight[ITEM, v.start + MARK] = 1.0  # value: 1 where the attended position (an earlier copy) is an item word
        model.transformer.h[0].attn.c_proj.weight[MARK, MARK] = 1.0
        # layer 1: the receiver
        a1 = model.transformer.h[1].attn.c_attn
        a1.bias[q.start + ITEM] = 4.0  # a constant query
        a1.weight[ITEM, k.start + ITEM] = 1.0  # item words attract
        a1.weight[MARK, k.start + ITEM] = -gamma  # the marker repels (gamma > 0) or attracts
    return model


def _prompts():
    from interpipe.data import tasks

    rng = random.Random(3)
    return [tasks.laundry_list(rng, n_items=n) for n in (3, 4, 5, 5, 6, 4)]


@pytest.mark.parametrize("gamma", [6.0, -6.0])
def test_inhibition_sign_on_planted_mechanism(gamma, tiny_loaded, tmp_path):
    from interpipe.models import describe, save_model_folder
    from interpipe.models.arch import describe_architecture
    from interpipe.weights.common import boot_bridge, folded_head_weights
    from interpipe.weights.composition import head_components
    from interpipe.weights.laundry import LaundryBatch, run_laundry
    from interpipe.weights.talking_heads import attention_to, inhibition_scores

    tok = tiny_loaded.tokenizer
    model = planted_model(tok, gamma)
    folder = save_model_folder(tmp_path / "planted", model, tok, describe(model, "planted", "test", "causal_lm"))
    spec = describe_architecture(model)
    weights = folded_head_weights(boot_bridge(model, tok, folder), model, spec)
    comps = head_components(weights, 1)
    batch = LaundryBatch(tok, model, _prompts())
    _, clean = run_laundry(model, spec, batch, 8, receiver=(1, 0), logits=False)
    second = batch.repeated & ~batch.repeated_first
    # the planted mechanism works: second mentions get less (gamma > 0) or more attention than first ones
    per_second = attention_to(clean, second) / second.sum(1)
    per_first = attention_to(clean, batch.repeated_first) / batch.repeated_first.sum(1)
    assert bool(((per_second < per_first) if gamma > 0 else (per_second > per_first)).all())

    frame, _ = inhibition_scores(model, spec, weights, comps, batch, Component.head(1, 0), 1, 8)
    row = frame.iloc[0]
    assert row["sender"] == "L0H0"
    if gamma > 0:
        assert row["inhibition"] > 0.05 and row["inhibition"] > 2 * row["inhibition_first_mention"]
    else:
        assert row["inhibition"] < -0.05
