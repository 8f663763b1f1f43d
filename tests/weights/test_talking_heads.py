"""Talking Heads: weight edit = activation edit; scale 1 changes nothing; every mention is scored;
selection and evaluation prompts are disjoint; the saved edit reproduces its accuracy under stock loading."""

from __future__ import annotations

import random

import pytest
import torch

from interpipe.components import Component
from interpipe.models.arch import describe_architecture
from interpipe.weights.common import boot_bridge, folded_head_weights
from interpipe.weights.composition import head_components
from interpipe.weights.laundry import LaundryBatch, hf_final_logits, laundry_positions, run_laundry
from interpipe.weights.talking_heads import apply_weight_edit, edit_vectors, scale_component_hook


@pytest.fixture(scope="module")
def setup(tiny_loaded, tiny_toy_folder):
    from interpipe.data import tasks

    rng = random.Random(0)
    rows = [tasks.laundry_list(rng, n_items=n) for n in (2, 3, 4, 3)]
    bridge = boot_bridge(tiny_loaded.model, tiny_loaded.tokenizer, tiny_toy_folder)
    weights = folded_head_weights(bridge, tiny_loaded.model)
    return bridge, weights, head_components(weights, 4), LaundryBatch(tiny_loaded.tokenizer, tiny_loaded.model, rows)


@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_weight_edit_equals_activation_edit(setup, tiny_loaded, alpha):
    import copy

    bridge, weights, comps, batch = setup
    layer, head, comp = 0, 1, 0
    read, write = edit_vectors(weights, comps, Component.head(layer, head), comp)
    edit = (layer, scale_component_hook(alpha, head, read, write))
    act, _ = run_laundry(tiny_loaded.model, describe_architecture(tiny_loaded.model), batch, 8, edits=[edit])
    edited = copy.deepcopy(tiny_loaded.model)
    apply_weight_edit(edited, describe_architecture(edited), comps, Component.head(layer, head), comp, alpha)
    torch.testing.assert_close(hf_final_logits(edited, batch, 8), act, rtol=1e-4, atol=1e-4)
    base = hf_final_logits(tiny_loaded.model, batch, 8)
    assert float((base - act).abs().max()) > 1e-4  # the edit did something


def test_scale_one_is_identity(setup, tiny_loaded):
    bridge, weights, comps, batch = setup
    read, write = edit_vectors(weights, comps, Component.head(1, 0), 2)
    spec = describe_architecture(tiny_loaded.model)
    act, _ = run_laundry(tiny_loaded.model, spec, batch, 8, edits=[(1, scale_component_hook(1.0, 0, read, write))])
    torch.testing.assert_close(act, hf_final_logits(tiny_loaded.model, batch, 8), rtol=1e-5, atol=1e-5)


def test_laundry_positions_point_at_items(tiny_loaded):
    tok = tiny_loaded.tokenizer
    prompt = "The bag has a cup , a key and a box . I took out the cup and the box and kept the"
    answer_pos, every, first = laundry_positions(tok, prompt, "key")
    words = tok.convert_ids_to_tokens(tok(prompt)["input_ids"])
    assert words[answer_pos] == "key" and sorted(words[p] for p in first) == ["box", "cup"]
    assert sorted(words[p] for p in every) == ["box", "box", "cup", "cup"] and set(first) < set(every)
    assert min(set(every) - set(first)) > words.index(".")  # the second mentions sit in the taken-out part
    with pytest.raises(ValueError, match="Laundry List"):
        laundry_positions(tok, "The cat sat on the mat", "mat")


def test_receiver_attention_matches_bridge_and_stops_early(setup, tiny_loaded):
    """The HF attention pattern read by hooks equals the bridge's ``hook_pattern``, with and without
    the forward stopped at the receiver, and the edit reaches the receiver's attention."""
    bridge, weights, comps, batch = setup
    spec = describe_architecture(tiny_loaded.model)
    layer, head = 1, 1
    _, full = run_laundry(tiny_loaded.model, spec, batch, 3, receiver=(layer, head))
    logits, stopped = run_laundry(tiny_loaded.model, spec, batch, 3, receiver=(layer, head), logits=False)
    _, cache = bridge.run_with_cache(batch.ids, names_filter=lambda n: n == f"blocks.{layer}.attn.hook_pattern")
    ref = cache[f"blocks.{layer}.attn.hook_pattern"][torch.arange(len(batch.last)), head, batch.last]  # (batch, k_pos)
    assert logits is None
    torch.testing.assert_close(full, stopped)
    torch.testing.assert_close(full, ref.float(), rtol=1e-4, atol=1e-5)
    read, write = edit_vectors(weights, comps, Component.head(0, 1), 0)
    _, edited = run_laundry(tiny_loaded.model, spec, batch, 3, edits=[(0, scale_component_hook(0.0, 1, read, write))],
                            receiver=(layer, head), logits=False)
    assert float((edited - full).abs().max()) > 1e-6


def test_selection_and_held_out_prompts_are_disjoint(data_root, tiny_loaded):
    from interpipe.data import load_task
    from interpipe.settings.weights import TalkingHeadsSettings
    from interpipe.weights.talking_heads import evaluation_prompts

    s = TalkingHeadsSettings(select_lengths=[5, 6], n_select=10, test_lengths=[2, 3, 6], n_test_per_length=6)
    select, test = evaluation_prompts(data_root, s, 0, 512, tiny_loaded.tokenizer)
    assert {r["n_items"] for r in select} == {5, 6} and len(select) == 10
    assert [r["n_items"] for r in test].count(6) == 6 and {r["n_items"] for r in test} == {2, 3, 6}
    trained = set(load_task(data_root, "laundry_list", "train")["key"])
    keys = {r["key"] for r in test}
    assert not keys & {r["key"] for r in select} and not keys & trained
    assert {r["n_items"] for r in select[:2]} == {5, 6}  # interleaved: the inhibition probe mixes lengths


def test_item_margin_is_the_kept_items_lead_over_every_taken_out_item(tiny_loaded):
    from interpipe.models.tokens import answer_token_id
    from interpipe.weights.laundry import item_margin

    tok = tiny_loaded.tokenizer
    rows = [{"prompt": "The bag has a cup , a key and a box . I took out the cup and the box and kept the",
             "answer": "key", "n_items": 3},
            {"prompt": "The bag has a cup and a key . I took out the cup and kept the", "answer": "key", "n_items": 2}]
    batch = LaundryBatch(tok, tiny_loaded.model, rows)
    key, cup, box = (answer_token_id(tok, w) for w in ("key", "cup", "box"))
    logits = torch.zeros(2, tiny_loaded.model.config.vocab_size)
    logits[:, key], logits[:, cup], logits[:, box] = 3.0, 1.0, 2.5  # box is no foil of the second prompt
    logits[:, 0] = 9.0  # a token that is no list item: not a foil
    assert item_margin(logits, batch).tolist() == pytest.approx([0.5, 2.0])
    assert batch.foil_mask.tolist() == [[True, True], [True, False]]


@pytest.fixture
def planted_edits(monkeypatch):
    """Edits with a known effect: a trial's logits put the kept item ``-(alpha - 2)^2`` above the best
    taken-out item on every prompt, so the item margin peaks at alpha = 2 while top-1 accuracy is
    the same (0) for every alpha: only the continuous score can tell the trials apart."""
    from interpipe.weights import talking_heads

    monkeypatch.setattr(talking_heads, "scale_component_hook", lambda alpha, *args: alpha)

    def run_laundry(model, spec, batch, batch_size, edits=(), **kwargs):
        alpha = edits[0][1] if edits else 1.0
        logits = torch.zeros(len(batch.rows), model.config.vocab_size)
        logits[:, 0] = 100.0  # the top token is never the kept item: accuracy 0 everywhere
        logits[torch.arange(len(batch.rows)), batch.foils[:, 0]] = 1.0
        logits[torch.arange(len(batch.rows)), batch.answers] = 1.0 - (alpha - 2.0) ** 2
        return logits, None

    monkeypatch.setattr(talking_heads, "run_laundry", run_laundry)
    return run_laundry


def test_the_edit_with_the_largest_margin_is_chosen_where_accuracy_ties(setup, tiny_loaded, planted_edits):
    import pandas as pd

    from interpipe.weights.talking_heads import choose_edit

    _, weights, comps, batch = setup
    spec = describe_architecture(tiny_loaded.model)
    inhibition = pd.DataFrame([{"sender": "L0H1", "comp": 0}])
    base = planted_edits(tiny_loaded.model, spec, batch, 8)[0]
    trials, before = choose_edit(tiny_loaded.model, spec, weights, comps, inhibition, batch, base,
                                 [0.0, 1.0, 2.0, 3.0], 1, 8)
    assert trials["select_accuracy"].tolist() == [0.0] * 4  # accuracy cannot choose
    assert trials["alpha"].tolist()[:2] == [2.0, 1.0]  # margin 0, then -1 (alpha 1 wins the tie with 3)
    assert trials["select_margin"].tolist() == pytest.approx([0.0, -1.0, -1.0, -4.0])
    assert before == {"accuracy": 0.0, "margin": pytest.approx(-1.0)}


def test_no_edit_wins_when_nothing_beats_it(setup, tiny_loaded, planted_edits):
    import pandas as pd

    from interpipe.weights.talking_heads import choose_edit

    _, weights, comps, batch = setup
    spec = describe_architecture(tiny_loaded.model)
    base = planted_edits(tiny_loaded.model, spec, batch, 8)[0]
    trials, _ = choose_edit(tiny_loaded.model, spec, weights, comps, pd.DataFrame([{"sender": "L0H1", "comp": 0}]),
                            batch, base, [0.0, 1.0, 3.0], 1, 8)
    assert trials.iloc[0]["alpha"] == 1.0  # 1 and 3 tie on the margin (-1): no edit wins ties


def test_failing_lengths_are_read_off_the_selection_prompts(setup, tiny_loaded):
    from interpipe.weights.talking_heads import failing_lengths

    _, _, _, batch = setup  # lengths 2, 3, 4, 3
    logits = torch.zeros(len(batch.rows), tiny_loaded.model.config.vocab_size)
    solved = torch.tensor([True, False, True, True])  # length 3: one of two prompts right
    logits[torch.arange(4)[solved], batch.answers[solved]] = 5.0
    assert failing_lengths(batch, logits, below=0.8) == [3]
    assert failing_lengths(batch, logits, below=0.4) == [3]  # none below: the worst length


def test_the_random_floor_is_another_head_before_the_receiver_with_the_same_rank():
    from interpipe.weights.talking_heads import random_component

    edit = {"sender": Component.head(0, 1), "comp": 2, "alpha": 0.0, "receiver": Component.head(2, 0)}
    picks = {random_component(edit, 3, seed)["sender"] for seed in range(40)}
    assert picks == {Component.head(layer, h) for layer in (0, 1) for h in range(3)} - {Component.head(0, 1)}
    assert random_component(edit, 3, 0)["comp"] == 2 and random_component(edit, 3, 0)["alpha"] == 0.0
    assert random_component({**edit, "receiver": Component.head(1, 0)}, 2, 0)["sender"] == Component.head(0, 0)
    alone = {**edit, "sender": Component.head(0, 0), "receiver": Component.head(1, 0)}
    assert random_component(alone, 1, 0) is None  # one head before the receiver, and it is the edited one


@pytest.mark.slow
def test_saved_edit_reproduces_accuracy_under_stock_loading(tiny_loaded, tiny_toy_folder, data_root, tmp_path):
    """The edited folder, loaded with plain AutoModelForCausalLM, gives the reported held-out
    accuracy; it differs from the original weights exactly when an edit was applied."""
    from transformers import AutoModelForCausalLM

    from interpipe.settings.weights import TalkingHeadsSettings
    from interpipe.weights.laundry import correct
    from interpipe.weights.talking_heads import evaluation_prompts, run_talking_heads

    s = TalkingHeadsSettings(n_components=2, inhibition_components=1, n_inhibition_prompts=4, edit_candidates=1,
                             edit_scales=[0.0, 1.0, 3.0], select_lengths=[5, 6], n_select=8, test_lengths=[2, 6],
                             n_test_per_length=6)
    result = run_talking_heads(tiny_loaded, tiny_toy_folder, data_root, s, batch_size=8, out_dir=tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "model_edited").eval()
    from interpipe.models.tokens import context_length

    _, test_rows = evaluation_prompts(data_root, s, 0, context_length(tiny_loaded.model), tiny_loaded.tokenizer)
    batch = LaundryBatch(tiny_loaded.tokenizer, stock, test_rows)
    acc = float(correct(hf_final_logits(stock, batch, 8), batch).mean())
    assert acc == pytest.approx(result.metrics["accuracy_all_weight_edit"], abs=1e-9)
    layer = result.metrics["edit_sender_layer"]
    name = f"transformer.h.{layer}.attn.c_proj.weight"
    changed = not torch.equal(stock.get_parameter(name), tiny_loaded.model.get_parameter(name))
    assert changed == bool(result.metrics["edit_applied"])
    m = result.metrics
    assert m["accuracy_failing_before_ci_low"] <= m["accuracy_failing_before"] <= m["accuracy_failing_before_ci_high"]
    assert (tmp_path / "model_edited" / "card.json").exists()
