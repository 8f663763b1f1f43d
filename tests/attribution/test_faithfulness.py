"""The evaluator on a hand-built classifier whose answer is known in closed form.

The model's class-1 logit is ``4 × (number of cue tokens)`` (read off the first embedding
coordinate) and its class-0 logit is 0.5. Every example has ten eligible tokens with exactly
one cue, so removing the cue moves ``p(class 1)`` from ``σ(3.5)`` to ``σ(-0.5)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from interpipe.attribution import Batch, ScoredModel
from interpipe.attribution.faithfulness import average_precision, faithfulness_metrics, rank_agreement

CUE, OTHER, MASK, PAD, CLS = 5, 6, 7, 0, 1
P_FULL, P_GONE = 1 / (1 + math.exp(-3.5)), 1 / (1 + math.exp(0.5))


class CueCounter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_labels=2, num_hidden_layers=1, max_position_embeddings=64)
        self.embed = torch.nn.Embedding(8, 2)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[CUE] = torch.tensor([1.0, 0.0])
            self.embed.weight[OTHER] = torch.tensor([0.0, 1.0])
        self.classifier = torch.nn.Identity()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **_):
        e = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        count = (e[..., 0] * attention_mask).sum(1)  # (batch,)
        logits = torch.stack([torch.full_like(count, 0.5), 4 * count], dim=1)  # (batch, 2)
        return SimpleNamespace(logits=logits)


def make_batch(cue_at: list[int]) -> Batch:
    n = len(cue_at)
    ids = torch.full((n, 11), OTHER)
    ids[:, 0] = CLS
    cue = torch.zeros((n, 11), dtype=torch.bool)
    for b, i in enumerate(cue_at):
        ids[b, i] = CUE
        cue[b, i] = True
    eligible = torch.ones((n, 11), dtype=torch.bool)
    eligible[:, 0] = False
    return Batch(example_ids=[f"e{b}" for b in range(n)], tasks=["t"] * n, input_ids=ids,
                 attention_mask=torch.ones((n, 11), dtype=torch.long), eligible=eligible, cue_mask=cue,
                 score_pos=torch.zeros(n, dtype=torch.long), target_ids=torch.ones(n, dtype=torch.long),
                 gold_ids=torch.ones(n, dtype=torch.long), tokens=[["t"] * 11] * n)


RATIOS = [0.1, 0.3, 0.5, 0.7, 0.9]


@pytest.fixture()
def setup():
    sm = ScoredModel(CueCounter(), "sequence_classifier")
    batch = make_batch([3, 7])
    positions = torch.arange(11, dtype=torch.float).expand(2, 11)
    perfect = torch.where(batch.cue_mask, 100.0, -positions)  # cue first
    worst = torch.where(batch.cue_mask, -100.0, positions)  # cue last
    return sm, batch, perfect, worst


@pytest.mark.parametrize("rule,token", [("mask", MASK), ("pad", PAD), ("delete", None)])
def test_removal_known_answers(setup, rule, token):
    sm, batch, perfect, worst = setup
    m, curve = faithfulness_metrics(sm, batch, perfect, batch.target_ids, RATIOS, rule, token)
    assert m["target_full"] == pytest.approx(P_FULL, abs=1e-6)
    assert m["comprehensiveness"] == pytest.approx(P_FULL - P_GONE, abs=1e-6)  # the cue goes at every k
    assert m["sufficiency"] == pytest.approx(0.0, abs=1e-6)  # the cue stays at every k
    assert m["comprehensiveness_accuracy"] == 0.0 and m["sufficiency_accuracy"] == 1.0
    assert len(curve) == len(RATIOS)
    w, _ = faithfulness_metrics(sm, batch, worst, batch.target_ids, RATIOS, rule, token)
    assert w["comprehensiveness"] == pytest.approx(0.0, abs=1e-6)  # 90 % of 10 = 9 tokens: never the cue
    assert w["sufficiency"] == pytest.approx(P_FULL - P_GONE, abs=1e-6)
    assert w["comprehensiveness_accuracy"] == 1.0 and w["sufficiency_accuracy"] == 0.0


def test_soft_known_answers(setup):
    """ŝ = 1 on the cue, 0 elsewhere: soft comprehensiveness zeroes exactly the cue's embedding."""
    sm, batch, perfect, worst = setup
    m, _ = faithfulness_metrics(sm, batch, perfect, batch.target_ids, RATIOS, "mask", MASK)
    assert m["soft_comprehensiveness"] == pytest.approx(P_FULL - P_GONE, abs=1e-6)
    assert m["soft_sufficiency"] == pytest.approx(0.0, abs=1e-6)
    w, _ = faithfulness_metrics(sm, batch, worst, batch.target_ids, RATIOS, "mask", MASK)
    assert w["soft_comprehensiveness"] == pytest.approx(0.0, abs=1e-6)
    assert w["soft_sufficiency"] == pytest.approx(P_FULL - P_GONE, abs=1e-6)


def test_plausibility_known_answers(setup):
    sm, batch, perfect, worst = setup
    m, _ = faithfulness_metrics(sm, batch, perfect, batch.target_ids, RATIOS, "mask", MASK)
    assert m["plausibility_map"] == 1.0
    assert m["cue_mass"] == pytest.approx(1.0, abs=1e-6)  # softmax of 100 vs <= 0
    assert m["cue_fraction"] == pytest.approx(0.1)
    w, _ = faithfulness_metrics(sm, batch, worst, batch.target_ids, RATIOS, "mask", MASK)
    assert w["plausibility_map"] == pytest.approx(0.1)  # the one cue ranked 10th of 10
    flat = torch.zeros_like(perfect)
    f, _ = faithfulness_metrics(sm, batch, flat, batch.target_ids, RATIOS, "mask", MASK)
    assert f["cue_mass"] == pytest.approx(0.1)  # uniform softmax over ten tokens


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    ap = average_precision(torch.tensor([0.9, 0.5, 0.7, 0.1]), torch.tensor([True, False, False, True]))
    assert ap == pytest.approx(0.5 * (1 + 2 / 4))
    ap = average_precision(torch.tensor([0.9, 0.5, 0.7, 0.1]), torch.tensor([True, False, True, False]))
    assert ap == 1.0


def test_rank_agreement_known_answers(setup):
    _, batch, perfect, worst = setup
    table = rank_agreement({"a": perfect, "b": perfect.clone(), "c": -perfect}, batch.eligible)
    assert table.loc["a", "b"] == pytest.approx(1.0)
    assert table.loc["a", "c"] == pytest.approx(-1.0)


def test_nonfinite_scores_are_refused(setup):
    sm, batch, perfect, _ = setup
    bad = perfect.clone()
    bad[0, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        faithfulness_metrics(sm, batch, bad, batch.target_ids, RATIOS, "mask", MASK)


def test_shared_memo_changes_nothing():
    """Answers kept across calls (identical perturbed inputs run once) equal fresh ones."""
    sm = ScoredModel(CueCounter(), "sequence_classifier")
    batch = make_batch([2, 5, 9])
    gen = torch.Generator().manual_seed(0)
    memo: dict = {}
    for _ in range(3):
        scores = torch.rand(batch.input_ids.shape, generator=gen)
        shared, _ = faithfulness_metrics(sm, batch, scores, batch.target_ids, RATIOS, "mask", MASK, memo=memo)
        fresh, _ = faithfulness_metrics(sm, batch, scores, batch.target_ids, RATIOS, "mask", MASK)
        assert shared == pytest.approx(fresh)
    assert memo


def test_mean_operator_known_answer(setup):
    """``mean``: each removed token becomes the mean embedding, whose cue coordinate is 1/8 (one cue row of 8)."""
    from interpipe.attribution.faithfulness import replacement_token

    sm, batch, perfect, _ = setup
    rule, token = replacement_token(None, "mean")
    m, _ = faithfulness_metrics(sm, batch, perfect, batch.target_ids, RATIOS, rule, token, soft=False)
    removed = [max(1, round(k * 10)) for k in RATIOS]  # the top n of ten eligible tokens, the cue first
    p_mean = [1 / (1 + math.exp(-(4 * n / 8 - 0.5))) for n in removed]  # class-1 logit 4 × n/8 against 0.5
    assert m["comprehensiveness"] == pytest.approx(sum(P_FULL - p for p in p_mean) / len(RATIOS), abs=1e-6)
    p_kept = [1 / (1 + math.exp(-(4 * (1 + (10 - n) / 8) - 0.5))) for n in removed]  # the cue kept, the rest mean
    assert m["sufficiency"] == pytest.approx(sum(P_FULL - p for p in p_kept) / len(RATIOS), abs=1e-6)


def test_normalised_soft_scores_known_answers(setup):
    """Soft-NC / Soft-NS: divided by the drop with every eligible embedding zeroed (P_FULL − P_GONE)."""
    from interpipe.attribution.faithfulness import faithfulness_per_example

    sm, batch, perfect, worst = setup
    per, _ = faithfulness_per_example(sm, batch, perfect, batch.target_ids, RATIOS, "mask", MASK, soft_normalised=True)
    assert per["soft_comprehensiveness"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert per["soft_sufficiency"] == pytest.approx([0.0, 0.0], abs=1e-6)
    per, _ = faithfulness_per_example(sm, batch, worst, batch.target_ids, RATIOS, "mask", MASK, soft_normalised=True)
    assert per["soft_comprehensiveness"] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert per["soft_sufficiency"] == pytest.approx([1.0, 1.0], abs=1e-6)


def test_standardised_cue_mass_is_scale_free(setup):
    from interpipe.attribution.faithfulness import plausibility

    _, batch, perfect, _ = setup
    scores = torch.where(batch.cue_mask, 2.0, torch.linspace(0, 1, 11).expand(2, 11))
    raw = [plausibility(scores * k, batch.eligible, batch.cue_mask, "softmax")["cue_mass"] for k in (1, 10)]
    std = [plausibility(scores * k + 3, batch.eligible, batch.cue_mask, "standardised")["cue_mass"] for k in (1, 10)]
    assert raw[0] != pytest.approx(raw[1], abs=1e-3)  # the paper's softmax mass depends on the scale
    assert std[0] == pytest.approx(std[1], abs=1e-9)


def test_win_table_and_paired_intervals():
    """A method shifted by +0.1 against random on the same examples beats it; a copy does not."""
    import numpy as np

    from interpipe.attribution.uncertainty import comparisons, win_table

    gen = np.random.default_rng(0)
    rand = {"comprehensiveness": gen.uniform(0, 1, 40), "sufficiency": gen.uniform(0, 1, 40)}
    better = {"comprehensiveness": rand["comprehensiveness"] + 0.1, "sufficiency": rand["sufficiency"] - 0.1}
    same = {k: v.copy() for k, v in rand.items()}
    rows = {(r["method"], r["metric"]): r for r in win_table({"random": rand, "better": better, "same": same})}
    assert rows[("better", "comprehensiveness")]["better_than_random"]
    assert rows[("better", "sufficiency")]["better_than_random"]
    assert not rows[("same", "comprehensiveness")]["better_than_random"]
    diffs = comparisons({"random": rand, "better": better}, "random", "vs_random")["better"]
    assert diffs["vs_random/comprehensiveness"] == pytest.approx(0.1)
    assert diffs["vs_random/comprehensiveness_ci_low"] == pytest.approx(0.1)  # a constant paired shift: no spread
