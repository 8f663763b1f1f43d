"""Known answers: IG completeness, NormXLogit by hand through the model's own head, attention."""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution import AttributeSettings, attribute, attribute_positions
from interpipe.attribution.methods import ig_baseline, resolve_targets


def test_integrated_gradients_completeness(case):
    """Σ_i IG_i = y(x) − y(baseline) for the target logit (Sundararajan et al. 2017)."""
    sm, batch, tokenizer = case
    result = attribute(sm, batch, "integrated_gradients", AttributeSettings(ig_steps=64), tokenizer)
    targets = resolve_targets(sm, batch)
    with torch.no_grad():
        full, _ = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids)
        base, _ = sm.forward(batch.attention_mask, batch.score_pos, inputs_embeds=ig_baseline(sm, batch, "zero"))
    expected = (full - base).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.scores.sum(1), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))


def test_normxlogit_classifier_by_hand(bert_case):
    """BERT: ‖hidden_states[0]_i‖ × classifier(tanh(pooler.dense(h_i)))[predicted class]."""
    sm, batch, _ = bert_case
    model = sm.model
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        predicted = out.logits.argmax(-1)
        expected_layers = []
        for h in out.hidden_states:
            pooled = torch.tanh(h @ model.bert.pooler.dense.weight.T + model.bert.pooler.dense.bias)
            logits = pooled @ model.classifier.weight.T + model.classifier.bias  # (batch, pos, 2)
            norm = out.hidden_states[0].norm(dim=-1)
            expected_layers.append(norm * logits[torch.arange(len(batch)), :, predicted])
    result = attribute(sm, batch, "normxlogit", AttributeSettings(layerwise=True))
    mask = batch.attention_mask.bool()
    assert torch.equal(result.target_ids, predicted)
    torch.testing.assert_close(result.scores[mask], expected_layers[-1][mask], rtol=1e-5, atol=1e-5)
    for layer, expected in enumerate(expected_layers):
        torch.testing.assert_close(result.layer_scores[layer][mask], expected[mask], rtol=1e-5, atol=1e-5)
    logat = attribute(sm, batch, "logat").scores
    norm = attribute(sm, batch, "norm").scores
    torch.testing.assert_close(norm * logat, result.scores, rtol=1e-5, atol=1e-5)


def test_normxlogit_causal_by_hand(gpt2_case):
    """GPT-2: ‖wte + wpe‖ × (lm_head(ln_f(h_i^l)))[answer token] for every layer l."""
    sm, batch, _ = gpt2_case
    model = sm.model
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    positions = torch.arange(batch.input_ids.shape[1])
    with torch.no_grad():
        x0 = wte[batch.input_ids] + wpe[positions][None]  # (batch, pos, d_model): the embedding output
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        n = len(out.hidden_states)
        expected = []
        for layer, h in enumerate(out.hidden_states):
            normed = h if layer == n - 1 else model.transformer.ln_f(h)  # HF's last entry is already ln_f'd
            logits = normed @ wte.T  # tied unembedding
            expected.append(x0.norm(dim=-1) * logits.gather(-1, batch.target_ids[:, None, None].expand(-1, h.shape[1], 1))[..., 0])
    result = attribute(sm, batch, "normxlogit", AttributeSettings(layerwise=True))
    mask = batch.attention_mask.bool()
    for layer in range(n):
        torch.testing.assert_close(result.layer_scores[layer][mask], expected[layer][mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.scores[mask], expected[-1][mask], rtol=1e-4, atol=1e-4)
    words = attribute(sm, batch, "norm", AttributeSettings(norm_source="word_embeddings")).scores
    torch.testing.assert_close(words[mask], wte[batch.input_ids].norm(dim=-1)[mask])


def test_every_position_normxlogit_equals_single_target(gpt2_case):
    """Row j of the all-targets matrix equals a single-target call on the prefix 0..j."""
    from interpipe.attribution import encode_rows

    sm, batch, tokenizer = gpt2_case
    n = int(batch.attention_mask[2].sum())
    ids = batch.input_ids[2, :n]
    matrix = attribute_positions(sm, ids, "normxlogit")
    for j in (3, n - 2):
        prefix = tokenizer.decode(ids[1:j + 1])
        answer = tokenizer.convert_ids_to_tokens(int(ids[j + 1]))
        row = {"example_id": "p", "prompt": prefix, "answer": answer, "cue_spans": []}
        single = attribute(sm, encode_rows(tokenizer, [row], "causal_lm", 32), "normxlogit").scores[0]
        torch.testing.assert_close(matrix[j, : j + 1], single, rtol=1e-4, atol=1e-4)
        assert torch.all(matrix[j, j + 1:] == 0)


def test_attention_and_rollout_by_hand(gpt2_case):
    sm, batch, _ = gpt2_case
    with torch.no_grad():
        sm.model.set_attn_implementation("eager")
        atts = sm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True).attentions
        sm.model.set_attn_implementation("sdpa")
    b = 1
    pos = int(batch.score_pos[b])
    expected = atts[-1][b].mean(0)[pos]
    torch.testing.assert_close(attribute(sm, batch, "attention").scores[b], torch.where(
        batch.attention_mask[b].bool(), expected, 0.0))
    roll = torch.eye(atts[0].shape[-1])
    for a in atts:
        m = 0.5 * a[b].mean(0) + 0.5 * torch.eye(a.shape[-1])
        roll = (m / m.sum(-1, keepdim=True)) @ roll
    got = attribute(sm, batch, "attention_rollout").scores[b]
    torch.testing.assert_close(got, torch.where(batch.attention_mask[b].bool(), roll[pos], 0.0))


def test_random_is_seeded(case):
    sm, batch, _ = case
    a = attribute(sm, batch, "random", AttributeSettings(seed=3)).scores
    b = attribute(sm, batch, "random", AttributeSettings(seed=3)).scores
    c = attribute(sm, batch, "random", AttributeSettings(seed=4)).scores
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["saliency", "grad_x_input", "integrated_gradients"])
def test_batching_does_not_change_scores(gpt2_case, method):
    """One example alone gets the same scores as inside a padded batch."""
    sm, batch, tokenizer = gpt2_case
    s = AttributeSettings(ig_steps=8)
    together = attribute(sm, batch, method, s, tokenizer).scores
    alone = attribute(sm, batch.select([0]), method, s, tokenizer).scores
    n = int(batch.attention_mask[0].sum())
    torch.testing.assert_close(alone[0, :n], together[0, :n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["saliency", "grad_x_input"])
def test_every_position_blocks_do_not_change_scores(gpt2_case, method):
    """Truncating to each block's prefix is exact for a causal LM."""
    sm, batch, _ = gpt2_case
    ids = batch.input_ids[2, : int(batch.attention_mask[2].sum())]
    torch.testing.assert_close(attribute_positions(sm, ids, method, block=3),
                               attribute_positions(sm, ids, method, block=100), rtol=1e-4, atol=1e-6)
