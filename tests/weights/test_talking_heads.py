"""Talking Heads edits: the weight edit equals the activation edit; scale 1 changes nothing."""

from __future__ import annotations

import random

import pytest
import torch

from interpipe.weights.common import boot_bridge, folded_head_weights
from interpipe.weights.composition import head_components
from interpipe.weights.talking_heads import (HOOK_Z, LaundryBatch, apply_weight_edit, edit_vectors, hf_final_logits,
                                             laundry_positions, run_laundry, scale_component_hook)


@pytest.fixture(scope="module")
def setup(tiny_loaded, tiny_toy_folder):
    from interpipe.data import tasks

    rng = random.Random(0)
    rows = [tasks.laundry_list(rng, n_items=n) for n in (2, 3, 4, 3)]
    bridge = boot_bridge(tiny_loaded.model, tiny_loaded.tokenizer, tiny_toy_folder)
    weights = folded_head_weights(bridge)
    return bridge, weights, head_components(weights, 4), LaundryBatch(tiny_loaded.tokenizer, tiny_loaded.model, rows)


@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_weight_edit_equals_activation_edit(setup, tiny_loaded, alpha):
    import copy

    bridge, weights, comps, batch = setup
    layer, head, comp = 0, 1, 0
    read, write = edit_vectors(weights, comps, layer, head, comp)
    hook = (HOOK_Z.format(layer=layer), scale_component_hook(alpha, head, read, write))
    act, _ = run_laundry(bridge, batch, 8, hooks=[hook])
    edited = copy.deepcopy(tiny_loaded.model)
    apply_weight_edit(edited, bridge, comps, layer, head, comp, alpha)
    torch.testing.assert_close(hf_final_logits(edited, batch, 8), act, rtol=1e-4, atol=1e-4)
    base = hf_final_logits(tiny_loaded.model, batch, 8)
    assert float((base - act).abs().max()) > 1e-4  # the edit did something


def test_scale_one_is_identity(setup, tiny_loaded):
    bridge, weights, comps, batch = setup
    read, write = edit_vectors(weights, comps, 1, 0, 2)
    act, _ = run_laundry(bridge, batch, 8, hooks=[(HOOK_Z.format(layer=1), scale_component_hook(1.0, 0, read, write))])
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
