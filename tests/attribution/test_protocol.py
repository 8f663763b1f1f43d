"""The causal-LM protocol on a hand-built GPT-2 whose answer depends on the last token only.

With every block's output projections and the position embeddings zeroed, the residual stream
at position ``i`` is the word embedding of token ``i`` alone, so the prediction read at the last
prompt position depends on that token and nothing else. Then, in closed form: removing any other
token changes nothing (comprehensiveness = sufficiency = 0 under every operator), while removing
the predicting position does; and NormXLogit's score at that position is ``‖x⁰‖ × the output logit``.
"""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution import AttributeSettings, ScoredModel, attribute, encode_rows
from interpipe.attribution.faithfulness import faithfulness_metrics, replacement_token
from interpipe.attribution.faithfulness.removal import top_k_masks

from tests.attribution.conftest import rows_for

RATIOS = [0.2, 0.5, 0.9]


@pytest.fixture(scope="module")
def last_token_model(gpt2):
    from transformers import GPT2LMHeadModel

    model, tokenizer = gpt2
    hand = GPT2LMHeadModel(model.config).eval()
    hand.load_state_dict(model.state_dict())
    with torch.no_grad():
        hand.transformer.wpe.weight.zero_()
        for block in hand.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    return ScoredModel(hand, "causal_lm"), tokenizer


@pytest.mark.parametrize("operator", ["pad", "delete", "mean"])
def test_excluded_scored_position_is_never_removed(last_token_model, operator):
    sm, tokenizer = last_token_model
    batch = encode_rows(tokenizer, rows_for(), "causal_lm", 32)  # default: scored_position=exclude
    rows = torch.arange(len(batch))
    assert not batch.eligible[rows, batch.score_pos].any() and batch.attributable[rows, batch.score_pos].all()
    rule, token = replacement_token(tokenizer, operator, "causal_lm")
    positions = torch.arange(batch.input_ids.shape[1], dtype=torch.float).expand_as(batch.input_ids)
    for scores in (positions, -positions, attribute(sm, batch, "normxlogit").scores):
        m, _ = faithfulness_metrics(sm, batch, scores, batch.target_ids, RATIOS, rule, token, soft=False)
        assert m["comprehensiveness"] == pytest.approx(0.0, abs=1e-6)  # only the last token matters
        assert m["sufficiency"] == pytest.approx(0.0, abs=1e-6)
        assert not top_k_masks(scores, batch.eligible, RATIOS)[:, rows, batch.score_pos].any()


def test_ranked_scored_position_carries_the_whole_effect(last_token_model):
    """The alternative protocol (``rank``): a ranking that puts the predicting position first wins."""
    sm, tokenizer = last_token_model
    batch = encode_rows(tokenizer, rows_for(), "causal_lm", 32, scored_position="rank")
    rows = torch.arange(len(batch))
    assert batch.eligible[rows, batch.score_pos].all()
    rule, token = replacement_token(tokenizer, "mean", "causal_lm")
    last_first = torch.zeros(batch.input_ids.shape)
    last_first[rows, batch.score_pos] = 1.0
    m, _ = faithfulness_metrics(sm, batch, last_first, batch.target_ids, RATIOS, rule, token, soft=False)
    assert abs(m["comprehensiveness"]) > 1e-5  # removing the predicting token moves the prediction (exclude: 0 ± 1e-6)
    assert m["sufficiency"] == pytest.approx(0.0, abs=1e-6)  # keeping only it keeps everything
    nxl = attribute(sm, batch, "normxlogit").scores
    with torch.no_grad():
        logits, out = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids,
                                 output_hidden_states=True)
    x0 = out.hidden_states[0][rows, batch.score_pos].norm(dim=-1)  # (batch,)
    expected = x0 * logits.gather(1, batch.target_ids[:, None])[:, 0]
    torch.testing.assert_close(nxl[rows, batch.score_pos], expected, rtol=1e-4, atol=1e-4)


def test_stage_setting_reaches_the_batch(gpt2):
    _, tokenizer = gpt2
    with pytest.raises(ValueError, match="scored_position"):
        AttributeSettings(scored_position="first")
    with pytest.raises(ValueError, match="scored_position"):
        encode_rows(tokenizer, rows_for(), "causal_lm", 32, scored_position="first")
