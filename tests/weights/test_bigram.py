"""Bigram subnetworks: all-ones masks equal the base model; backoff targets; the undecided stop; masks round-trip; resume."""

from __future__ import annotations

import math

import pytest
import torch

from interpipe.weights.bigram_subnetwork import (BigramTable, apply_masks, load_masks, maskable_weights, masked_logits,
                                                 random_masks_like, save_masks, train_masks)
from interpipe.settings.weights import BigramSettings


def test_all_ones_masks_equal_base_model(tiny_loaded):
    model = tiny_loaded.model
    ids = torch.randint(3, model.config.vocab_size, (2, 9))
    masks = {n: torch.ones_like(w) for n, w in maskable_weights(model).items()}
    with torch.no_grad():
        torch.testing.assert_close(masked_logits(model, masks, input_ids=ids), model(input_ids=ids).logits, rtol=0, atol=0)
        zeroed = masked_logits(model, {n: torch.zeros_like(m) for n, m in masks.items()}, input_ids=ids)
    assert not torch.allclose(zeroed, model(input_ids=ids).logits)
    names = list(masks)
    assert all(".h." in n for n in names) and not any("wte" in n or "lm_head" in n or "ln" in n for n in names)


def test_backoff_targets_match_hand_computation():
    """Official target: pairs seen once are pruned; a context with no pair left backs off to the
    unigram distribution of next tokens (no uniform mixing)."""
    from interpipe.weights.bigram_subnetwork import SURPRISAL_FLOOR

    ids = torch.tensor([[0, 1, 2, 1, 3, 0, 1, 2], [0, 1, 2, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]])
    table = BigramTable.count(ids, mask, vocab=4, max_successors=4, prune_minimum=2)
    # pairs: 0->1 x3, 1->2 x3, 2->1 x1, 1->3 x1, 3->0 x1: only 0->1 and 1->2 survive
    p1 = {int(i): float(p) for i, p in zip(table.succ_ids[1], table.succ_p[1]) if p > 0}
    assert p1 == pytest.approx({2: 1.0}) and table.has_bigram.tolist() == [True, True, False, False]
    next_tokens = [1, 2, 1, 3, 0, 1, 2, 1, 2]  # every real next token
    unigram = torch.tensor([next_tokens.count(v) / len(next_tokens) for v in range(4)])
    torch.testing.assert_close(table.unigram, unigram)
    logits = torch.randn(2, 8, 4)
    logq = torch.log_softmax(logits, -1)
    dense = torch.stack([torch.tensor([0.0, 1, 0, 0]), torch.tensor([0.0, 0, 1, 0]), unigram, unigram])  # (V, V)
    expected = -(dense[ids] * logq).sum(-1)[mask.bool()].mean()
    assert float(table.cross_entropy(logits, ids, mask)) == pytest.approx(float(expected), rel=1e-6)
    s = table.surprisal(ids, mask)
    add_one = (torch.tensor([next_tokens.count(v) for v in range(4)]) + 1) / (len(next_tokens) + 4)
    p_1to2 = (1 - SURPRISAL_FLOOR) * 1.0 + SURPRISAL_FLOOR * float(add_one[2])
    p_2to1 = (1 - SURPRISAL_FLOOR) * float(unigram[1]) + SURPRISAL_FLOOR * float(add_one[1])  # backoff
    assert float(s[1]) == pytest.approx(-math.log(p_1to2), rel=1e-6) and float(s[2]) == pytest.approx(-math.log(p_2to1), rel=1e-6)


def test_training_stops_when_decided(tiny_loaded):
    """A large lr and fast temperature growth decide every entry: training stops before the step
    cap with fewer than undecided_stop entries undecided, and the curve reports it."""
    from interpipe.weights.bigram_subnetwork import undecided_fraction

    ids = torch.randint(3, tiny_loaded.model.config.vocab_size, (12, 8))
    mask = torch.ones_like(ids)
    table = BigramTable.count(ids, mask, tiny_loaded.model.config.vocab_size, 8, 1)
    s = BigramSettings(steps=200, batch_size=4, lr=0.5, temperature_growth=1.3, undecided_stop=0.01)
    _, curve = train_masks(tiny_loaded.model, table, ids, mask, s, seed=0)
    assert len(curve) < 200 and curve[-1]["undecided"] < 0.01 <= curve[0]["undecided"]
    assert undecided_fraction({"a": torch.tensor([0.05, 0.5, 0.95, 0.2])}) == 0.5


def test_masks_round_trip_and_random_size(tiny_loaded, tmp_path):
    import copy

    weights = maskable_weights(tiny_loaded.model)
    g = torch.Generator().manual_seed(0)
    masks = {n: (torch.rand(w.shape, generator=g) < 0.2).float() for n, w in weights.items()}
    assert load_masks(save_masks(tmp_path / "m.safetensors", masks)).keys() == masks.keys()
    rand = random_masks_like(masks, seed=1)
    assert sum(float(m.sum()) for m in rand.values()) == sum(float(m.sum()) for m in masks.values())
    kept, ablated = copy.deepcopy(tiny_loaded.model), copy.deepcopy(tiny_loaded.model)
    apply_masks(kept, masks)
    apply_masks(ablated, masks, ablate=True)
    name = next(iter(masks))
    torch.testing.assert_close(kept.get_parameter(name) + ablated.get_parameter(name), tiny_loaded.model.get_parameter(name))


def test_training_resumes_from_checkpoint(tiny_loaded, tmp_path, monkeypatch):
    ids = torch.randint(3, tiny_loaded.model.config.vocab_size, (12, 8))
    mask = torch.ones_like(ids)
    table = BigramTable.count(ids, mask, tiny_loaded.model.config.vocab_size, 8, 1)
    s = BigramSettings(steps=4, batch_size=4, checkpoint_minutes=0.0, undecided_stop=1e-9)  # all 4 steps, a checkpoint after each
    straight, _ = train_masks(tiny_loaded.model, table, ids, mask, s, seed=0)
    calls = {"n": 0}
    original = BigramTable.cross_entropy

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(BigramTable, "cross_entropy", failing)
    with pytest.raises(KeyboardInterrupt):
        train_masks(tiny_loaded.model, table, ids, mask, s, seed=0, checkpoint_dir=tmp_path)
    monkeypatch.setattr(BigramTable, "cross_entropy", original)
    assert (tmp_path / "checkpoint.safetensors").exists()
    resumed, curve = train_masks(tiny_loaded.model, table, ids, mask, s, seed=0, checkpoint_dir=tmp_path)
    assert len(curve) == 4
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name])


@pytest.mark.parametrize("kwargs, key", [({"l0_lambda": -1}, "l0_lambda"), ({"steps": 0}, "steps"),
                                         ({"temperature_growth": 0.5}, "temperature_growth"),
                                         ({"undecided_stop": 0.0}, "undecided_stop"),
                                         ({"prune_minimum": 0}, "prune_minimum")])
def test_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=f"weights.bigram.{key}"):
        BigramSettings(**kwargs)
