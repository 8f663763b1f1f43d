"""Talking Heads edits: the weight edit equals the activation edit; scale 1 changes nothing."""

from __future__ import annotations

import random

import pytest
import torch

from interpipe.models.arch import describe_architecture
from interpipe.weights.common import boot_bridge, folded_head_weights
from interpipe.weights.composition import head_components
from interpipe.weights.talking_heads import (LaundryBatch, apply_weight_edit, edit_vectors, hf_final_logits,
                                             laundry_positions, run_laundry, scale_component_hook)


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
    read, write = edit_vectors(weights, comps, layer, head, comp)
    edit = (layer, scale_component_hook(alpha, head, read, write))
    act, _ = run_laundry(tiny_loaded.model, describe_architecture(tiny_loaded.model), batch, 8, edits=[edit])
    edited = copy.deepcopy(tiny_loaded.model)
    apply_weight_edit(edited, describe_architecture(edited), comps, layer, head, comp, alpha)
    torch.testing.assert_close(hf_final_logits(edited, batch, 8), act, rtol=1e-4, atol=1e-4)
    base = hf_final_logits(tiny_loaded.model, batch, 8)
    assert float((base - act).abs().max()) > 1e-4  # the edit did something


def test_scale_one_is_identity(setup, tiny_loaded):
    bridge, weights, comps, batch = setup
    read, write = edit_vectors(weights, comps, 1, 0, 2)
    spec = describe_architecture(tiny_loaded.model)
    act, _ = run_laundry(tiny_loaded.model, spec, batch, 8, edits=[(1, scale_component_hook(1.0, 0, read, write))])
    torch.testing.assert_close(act, hf_final_logits(tiny_loaded.model, batch, 8), rtol=1e-5, atol=1e-5)


def test_laundry_positions_point_at_items(tiny_loaded):
    tok = tiny_loaded.tokenizer
    prompt = "The bag has a cup , a key and a box . I took out the cup and the box and kept the"
    answer_pos, repeated = laundry_positions(tok, prompt, "key")
    ids = tok(prompt)["input_ids"]
    words = tok.convert_ids_to_tokens(ids)
    assert words[answer_pos] == "key" and sorted(words[p] for p in repeated) == ["box", "cup"]
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
    read, write = edit_vectors(weights, comps, 0, 1, 0)
    _, edited = run_laundry(tiny_loaded.model, spec, batch, 3, edits=[(0, scale_component_hook(0.0, 1, read, write))],
                            receiver=(layer, head), logits=False)
    assert float((edited - full).abs().max()) > 1e-6
