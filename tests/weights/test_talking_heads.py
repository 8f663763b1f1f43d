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


def test_no_edit_wins_ties(setup, tiny_loaded):
    """alpha = 1 costs no forward and is chosen whenever no edit beats it on the selection prompts."""
    import pandas as pd

    from interpipe.weights.talking_heads import choose_edit

    _, weights, comps, batch = setup
    spec = describe_architecture(tiny_loaded.model)
    inhibition = pd.DataFrame([{"sender": "L0H1", "comp": 0}])
    base = hf_final_logits(tiny_loaded.model, batch, 8)
    trials, base_acc = choose_edit(tiny_loaded.model, spec, weights, comps, inhibition, batch, base,
                                   [0.0, 1.0, 1.0 + 1e-6], 1, 8)
    best = trials.iloc[0]
    assert best["select_accuracy"] == trials["select_accuracy"].max()
    no_edit = trials[trials["alpha"] == 1.0].iloc[0]
    assert no_edit["select_accuracy"] == base_acc
    if best["select_accuracy"] == base_acc:  # 1 + 1e-6 ties with 1 (same argmax): 1 must win
        assert best["alpha"] == 1.0


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
