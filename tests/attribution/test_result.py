"""The result object: save/load round trip, no silent overwrite, frame columns, NaN refusal, plot."""

from __future__ import annotations

import pytest
import torch

from interpipe.attribution import Attribution, AttributeSettings, attribute
from interpipe.io import OutputExistsError


def test_save_load_round_trip(gpt2_case, tmp_path):
    sm, batch, _ = gpt2_case
    result = attribute(sm, batch, "normxlogit", AttributeSettings(layerwise=True), info={"seed": 0})
    result.save(tmp_path / "r")
    back = Attribution.load(tmp_path / "r")
    assert back.method == "normxlogit" and back.example_ids == result.example_ids and back.info == {"seed": 0}
    width = back.input_ids.shape[1]
    torch.testing.assert_close(back.scores, result.scores[:, :width])
    torch.testing.assert_close(back.layer_scores, result.layer_scores[:, :, :width])
    assert torch.equal(back.target_ids, result.target_ids)
    with pytest.raises(OutputExistsError):
        result.save(tmp_path / "r")
    result.save(tmp_path / "r", overwrite=True)


def test_frame_has_one_float_per_input_token(bert_case):
    sm, batch, _ = bert_case
    frame = attribute(sm, batch, "saliency").to_frame()
    assert list(frame.columns[:5]) == ["example_id", "input_ids", "tokens", "target_id", "scores"]
    for row, n in zip(frame.itertuples(), batch.attention_mask.sum(1).tolist()):
        assert len(row.input_ids) == len(row.tokens) == len(row.scores) == n


def test_causal_frame_is_the_prompt_fed_to_the_model(gpt2_case):
    sm, batch, tokenizer = gpt2_case
    frame = attribute(sm, batch, "logat").to_frame()
    row = frame.iloc[2]
    assert row.input_ids == tokenizer("When Anna and Bob went to the shop , Bob gave a pen to")["input_ids"]
    assert row.target_id == tokenizer.convert_tokens_to_ids("Anna")


def test_nonfinite_scores_are_reported_not_written(gpt2_case, tmp_path):
    sm, batch, _ = gpt2_case
    result = attribute(sm, batch, "norm")
    result.scores[1, 2] = float("inf")
    assert result.nonfinite_examples() == [batch.example_ids[1]]
    with pytest.raises(ValueError, match="non-finite"):
        result.save(tmp_path / "bad")
    assert not (tmp_path / "bad" / "attributions.parquet").exists()


def test_concat_and_plot(gpt2_case):
    sm, batch, _ = gpt2_case
    parts = [attribute(sm, batch.select([i]), "grad_x_input") for i in range(len(batch))]
    joined = Attribution.concat(parts)
    assert joined.example_ids == batch.example_ids
    torch.testing.assert_close(joined.scores, attribute(sm, batch, "grad_x_input").scores, rtol=1e-4, atol=1e-5)
    fig = joined.plot(max_examples=2)
    assert len(fig.axes) == 2
