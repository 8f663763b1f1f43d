"""The floor and the ceiling on a hand-built causal LM whose answer depends on exactly one token.

``OneTokenLM`` sums the 2-d embeddings of the prefix (a causal, attention-free "model") and reads
``logit(answer) = 4·h₀`` and ``logit(foil) = −4·h₀``, so the contrastive target is ``8·h₀``. Only
the cue token has a first coordinate (1); every other prompt token has 0, and the vocabulary's mean
embedding is exactly 0 (an ``anti`` token balances the cue), so under the mean-embedding operator:

- removing the cue drops the logit difference from 8 to 0, removing any other token changes nothing;
- a random ranking of ``n`` eligible tokens removes the cue among its top ``k`` with probability
  ``k / n``: the floor is ``8 k / n`` at each ``k``;
- the oracle removes the cue first: 8 at every ``k``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interpipe.attribution import AttributeSettings, Batch, ScoredModel, attribute
from interpipe.attribution.faithfulness import chance_floor, leave_one_out, references, replacement_token, top_k_drops
from interpipe.attribution.faithfulness.removal import soft_scores
from interpipe.attribution.uncertainty import UNINFORMATIVE, bounded_rows, normalised

PAD, CUE, OTHER, ANTI, ANSWER, FOIL, WEAK = range(7)
N_ELIGIBLE = 10


class OneTokenLM(torch.nn.Module):
    def __init__(self, gain: float = 4.0):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=1, max_position_embeddings=64)
        self.embed = torch.nn.Embedding(7, 2)
        self.unembed = torch.nn.Linear(2, 7, bias=False)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[CUE] = torch.tensor([1.0, 0.0])
            self.embed.weight[OTHER] = torch.tensor([0.0, 1.0])
            self.embed.weight[WEAK] = torch.tensor([0.01, 0.0])
            self.embed.weight[ANTI] = -(self.embed.weight[CUE] + self.embed.weight[OTHER] + self.embed.weight[WEAK])
            self.unembed.weight.zero_()
            self.unembed.weight[ANSWER, 0], self.unembed.weight[FOIL, 0] = gain, -gain

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.unembed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **_):
        e = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (batch, pos, 2)
        h = (e * attention_mask[..., None]).cumsum(1)  # (batch, pos, 2): position i sees the prefix 0..i
        return SimpleNamespace(logits=self.unembed(h), hidden_states=(e, h))  # (batch, pos, vocab)


def one_token_batch(cue_at: list[int | None], token: int = CUE) -> Batch:
    """Prompts of ``N_ELIGIBLE`` tokens plus the scored (last) position, the cue at ``cue_at[b]`` (None: no cue)."""
    n, width = len(cue_at), N_ELIGIBLE + 1
    ids = torch.full((n, width), OTHER)
    cue = torch.zeros((n, width), dtype=torch.bool)
    for b, i in enumerate(cue_at):
        if i is not None:
            ids[b, i], cue[b, i] = token, True
    eligible = torch.ones((n, width), dtype=torch.bool)
    eligible[:, -1] = False  # the scored position is kept out, as the study does for causal LMs
    return Batch(example_ids=[f"e{b}" for b in range(n)], tasks=["t"] * n, input_ids=ids,
                 attention_mask=torch.ones((n, width), dtype=torch.long), eligible=eligible, cue_mask=cue,
                 score_pos=torch.full((n,), width - 1), target_ids=torch.full((n,), ANSWER),
                 gold_ids=torch.full((n,), ANSWER), tokens=[["w"] * width] * n, foil_ids=torch.full((n,), FOIL))


@pytest.fixture(scope="module")
def one_token():
    rule, token = replacement_token(None, "mean", "causal_lm")
    return ScoredModel(OneTokenLM(), "causal_lm"), rule, token


def test_the_oracle_finds_the_one_token(one_token):
    sm, rule, token = one_token
    batch = one_token_batch([0, 4, 9])
    loo = leave_one_out(sm, batch, batch.target_ids, rule, token)
    expected = torch.where(batch.cue_mask, 8.0, 0.0)  # answer − foil logit difference 8·h₀ falls from 8 to 0
    torch.testing.assert_close(loo, expected)
    ref = references(sm, batch, batch.target_ids, 3, 4, 0, rule, token)
    torch.testing.assert_close(ref["oracle"], torch.full((3, 3), 8.0))  # the cue goes first at every k


def test_the_floor_is_chance(one_token):
    """k = 1 exactly 8/n; k = 2, 3 within sampling error of 8k/n (200 rankings of each of 8 examples)."""
    sm, rule, token = one_token
    batch = one_token_batch([0, 2, 3, 5, 6, 7, 8, 9])
    loo = leave_one_out(sm, batch, batch.target_ids, rule, token)
    floor = chance_floor(sm, batch, batch.target_ids, loo, 3, 200, 0, rule, token)
    torch.testing.assert_close(floor[0], torch.full((8,), 8.0 / N_ELIGIBLE))
    for k in (2, 3):  # the mean of 1600 Bernoulli(k/n) draws times 8: standard error < 0.1
        assert float(floor[k - 1].mean()) == pytest.approx(8.0 * k / N_ELIGIBLE, abs=0.3)


def test_normalised_scores_place_rankings_between_floor_and_oracle(one_token):
    """Cue first: 1. Cue last: (0 − F) / (8 − F) < 0. Random rankings: 0 in expectation."""
    sm, rule, token = one_token
    gen = torch.Generator().manual_seed(1)
    cues = torch.randint(0, N_ELIGIBLE, (120,), generator=gen).tolist()
    batch = one_token_batch(cues)
    ref = references(sm, batch, batch.target_ids, 3, 8, 0, rule, token)
    oracle, floor = ref["oracle"].mean(0).numpy(), ref["floor"].mean(0).numpy()
    positions = torch.arange(N_ELIGIBLE + 1, dtype=torch.float).expand(len(cues), -1)
    first = torch.where(batch.cue_mask, 100.0, -positions)
    last = torch.where(batch.cue_mask, -100.0, positions)
    aopc = {name: top_k_drops(sm, batch, s, batch.target_ids, 3, rule, token).mean(0).numpy()
            for name, s in (("first", first), ("last", last), ("random", torch.rand(first.shape, generator=gen)))}
    assert normalised(aopc["first"], floor, oracle).estimate == pytest.approx(1.0, abs=1e-6)
    f = 8.0 * 2 / N_ELIGIBLE  # the floor's AOPC over k = 1, 2, 3: 8·(1 + 2 + 3)/(3n)
    assert normalised(aopc["last"], floor, oracle).estimate == pytest.approx(-f / (8.0 - f), abs=0.05)
    rand = normalised(aopc["random"], floor, oracle)
    assert rand.low < 0.0 < rand.high and abs(rand.estimate) < 0.15
    assert normalised(oracle, floor, oracle).estimate == pytest.approx(1.0)


def test_gradient_x_input_attributes_the_contrast(one_token):
    """I×G of the contrastive target is e·∇(8h₀): 8 at the cue, 0 elsewhere; it ranks as the oracle does."""
    sm, rule, token = one_token
    batch = one_token_batch([1, 6])
    scores = attribute(sm, batch, "grad_x_input").scores
    torch.testing.assert_close(scores[:, :-1], torch.where(batch.cue_mask, 8.0, 0.0)[:, :-1])
    plain = one_token_batch([1, 6])
    plain.foil_ids = torch.full((2,), -1)  # the answer's logit alone: 4h₀
    torch.testing.assert_close(attribute(sm, plain, "grad_x_input").scores[:, :-1],
                               torch.where(batch.cue_mask, 4.0, 0.0)[:, :-1])


def test_a_study_with_nothing_to_find_is_uninformative():
    """No token matters (gain 0): oracle = floor, and the headline says so instead of ranking methods."""
    rule, token = replacement_token(None, "mean", "causal_lm")
    sm = ScoredModel(OneTokenLM(gain=0.0), "causal_lm")
    batch = one_token_batch([0, 3, 5, 8])
    ref = references(sm, batch, batch.target_ids, 3, 4, 0, rule, token)
    oracle, floor = ref["oracle"].mean(0).numpy(), ref["floor"].mean(0).numpy()
    rows = bounded_rows("m", {"random": floor.copy()}, floor, oracle, batch.tasks)
    assert {r["informative"] for r in rows} == {0} and rows[0]["note"] == UNINFORMATIVE
    found = references(ScoredModel(OneTokenLM(), "causal_lm"), batch, batch.target_ids, 3, 4, 0, rule, token)
    rows = bounded_rows("m", {}, found["floor"].mean(0).numpy(), found["oracle"].mean(0).numpy(), batch.tasks)
    assert rows[0]["informative"] == 1 and rows[0]["diff_ci_low"] > 0


def test_soft_normalisation_is_guarded(one_token):
    """A weak cue (h₀ = 0.01: the difference is 0.08) has almost nothing to normalise by: NaN under the guard."""
    sm, _, _ = one_token
    batch = one_token_batch([2, 2])
    batch.input_ids[1, 2] = WEAK
    perfect = torch.where(batch.cue_mask, 1.0, 0.0)
    loose = soft_scores(sm, batch, perfect, batch.target_ids, 0, normalised=True, min_drop=1e-6)
    guarded = soft_scores(sm, batch, perfect, batch.target_ids, 0, normalised=True, min_drop=0.1)
    assert loose["soft_comp_drop"].tolist() == pytest.approx([1.0, 1.0])  # the cue is all there is, in both
    assert guarded["soft_comp_drop"][0] == pytest.approx(1.0) and np.isnan(float(guarded["soft_comp_drop"][1]))


def test_settings_refuse_bad_bounds():
    with pytest.raises(ValueError, match="top_k"):
        AttributeSettings(top_k=-1)
    with pytest.raises(ValueError, match="causal_target"):
        AttributeSettings(causal_target="foil")


def test_contrastive_integrated_gradients_are_complete(gpt2_case):
    """Σ_i IG_i = Δ(x) − Δ(baseline) for Δ = logit(answer) − logit(foil) (Sundararajan et al. 2017)."""
    from dataclasses import replace

    from interpipe.attribution.methods import ig_baseline

    sm, batch, tokenizer = gpt2_case
    batch = replace(batch, foil_ids=torch.roll(batch.target_ids, 1))  # another prompt's answer as the foil
    result = attribute(sm, batch, "integrated_gradients", AttributeSettings(ig_steps=64), tokenizer)
    with torch.no_grad():
        full, _ = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids)
        base, _ = sm.forward(batch.attention_mask, batch.score_pos, inputs_embeds=ig_baseline(sm, batch, "zero"))
    diff = lambda logits: (logits.gather(1, batch.target_ids[:, None]) - logits.gather(1, batch.foil_ids[:, None]))[:, 0]  # noqa: E731
    expected = diff(full) - diff(base)
    torch.testing.assert_close(result.scores.sum(1), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))


def test_contrastive_normxlogit_by_hand(gpt2_case):
    """‖x⁰_i‖ × (LogAt_answer(x_i) − LogAt_foil(x_i)): the two rows of the tied unembedding."""
    from dataclasses import replace

    sm, batch, _ = gpt2_case
    batch = replace(batch, foil_ids=torch.roll(batch.target_ids, 1))
    model = sm.model
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        rows = model.transformer.wte.weight[batch.target_ids] - model.transformer.wte.weight[batch.foil_ids]  # (batch, d)
        expected = out.hidden_states[0].norm(dim=-1) * torch.einsum("bpd,bd->bp", out.hidden_states[-1], rows)
    mask = batch.attention_mask.bool()
    got = attribute(sm, batch, "normxlogit", AttributeSettings(layerwise=False)).scores
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-4, atol=1e-4)


def test_foils_come_from_the_answer_rule(gpt2):
    from interpipe.attribution import encode_rows
    from interpipe.models.tokens import answer_token_id

    from tests.attribution.conftest import rows_for

    _, tokenizer = gpt2
    rows = [{**r, "foil": foil} for r, foil in zip(rows_for(), ["superb", "Bob", "awful"])]
    batch = encode_rows(tokenizer, rows, "causal_lm", 32, causal_target="contrast")
    assert batch.foil_ids.tolist() == [answer_token_id(tokenizer, w) for w in ("superb", "Bob", "awful")]
    assert (encode_rows(tokenizer, rows, "causal_lm", 32).foil_ids == -1).all()  # the plain target
    with pytest.raises(ValueError, match="no foil"):
        encode_rows(tokenizer, rows_for(), "causal_lm", 32, causal_target="contrast")
    same = [{**r, "foil": r["answer"]} for r in rows_for()]
    with pytest.raises(ValueError, match="foil's first token is the answer's"):
        encode_rows(tokenizer, same, "causal_lm", 32, causal_target="contrast")


def test_causal_study_writes_the_bounded_headline(tiny_toy_folder, data_root, tmp_path):
    """The toy on IOI and SVA: the oracle against the floor per task, every method's normalised score."""
    import json

    import pandas as pd

    from interpipe.attribution.study import run_attribute

    s = AttributeSettings(methods=["grad_x_input", "random"], n_examples=8, ratios=[0.5], operators=[],
                          layerwise=False, top_k=2, floor_draws=2, n_heatmaps=1)
    summary = run_attribute(s, tiny_toy_folder, data_root, tmp_path)
    head = pd.read_csv(tmp_path / "headline.csv")
    bounded = head[head["metric"] == "normalised_comprehensiveness_k"]
    assert set(bounded["task"]) == {"all", "ioi", "sva"} and set(bounded["method"]) == {"grad_x_input", "random"}
    refs = pd.read_csv(tmp_path / "references" / "per_example.csv")
    assert len(refs) == 8 and (refs["oracle_at_1"] >= refs["floor_at_1"] - 1e-9).all()  # max ≥ mean of the effects
    oracle = head[(head["method"] == "oracle") & (head["metric"] == "comprehensiveness_k")].set_index("task")["value"]
    assert oracle["ioi"] == pytest.approx(refs.loc[refs["task"] == "ioi", "oracle_k"].mean())
    metrics = json.loads((tmp_path / "grad_x_input" / "metrics.json").read_text())
    assert "ioi/normalised_comprehensiveness_k_ci_low" in metrics
    informative = head[head["metric"] == "informative"].set_index("task")["value"]
    assert summary["oracle/all/informative"] == informative["all"] and (tmp_path / "headline_normalised.png").exists()
