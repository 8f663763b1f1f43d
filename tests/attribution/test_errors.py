"""Bad input fails with a clear error before any work."""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution import AttributeSettings, ScoredModel, attribute, attribute_positions, encode_rows

from tests.attribution.conftest import rows_for


def test_unknown_method(gpt2_case):
    sm, batch, _ = gpt2_case
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        attribute(sm, batch, "lime")
    with pytest.raises(ValueError, match="attribute.methods='lime'"):
        AttributeSettings(methods=["lime"])


def test_target_outside_vocabulary(gpt2_case):
    sm, batch, _ = gpt2_case
    bad = batch.select([0])
    bad.target_ids = torch.tensor([10_000])
    with pytest.raises(ValueError, match="outside the model's"):
        attribute(sm, bad, "saliency")


def test_model_without_head(bert):
    from transformers import BertModel

    model, _ = bert
    with pytest.raises(ValueError, match="model with a head"):
        ScoredModel(BertModel(model.config), "encoder")
    with pytest.raises(ValueError, match="no classification head"):
        ScoredModel(BertModel(model.config), "sequence_classifier")


def test_empty_and_overlong_inputs(gpt2):
    _, tokenizer = gpt2
    with pytest.raises(ValueError, match="no examples"):
        encode_rows(tokenizer, [], "causal_lm", 32)
    with pytest.raises(ValueError, match="empty prompt"):
        encode_rows(tokenizer, rows_for([("  ", "Anna", [])]), "causal_lm", 32)
    with pytest.raises(ValueError, match="over attribute.max_length=4"):
        encode_rows(tokenizer, rows_for(), "causal_lm", 4)


def test_longer_than_model_context(gpt2_case):
    sm, _, _ = gpt2_case
    with pytest.raises(ValueError, match="context is 32"):
        attribute_positions(sm, torch.ones(40, dtype=torch.long), "saliency")


@pytest.mark.parametrize("key,value", [("ig_steps", 0), ("ratios", [0.0, 0.5]), ("replacement", "zero"),
                                       ("norm_source", "layer1"), ("target", "gold")])
def test_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"attribute.{key}"):
        AttributeSettings(**{key: value})


def test_mask_replacement_needs_a_mask_token(gpt2):
    from interpipe.attribution.faithfulness import replacement_token

    _, tokenizer = gpt2
    assert replacement_token(tokenizer, "auto") == ("pad", tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="no mask token"):
        replacement_token(tokenizer, "mask")
