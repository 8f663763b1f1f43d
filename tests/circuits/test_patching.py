"""Batched activation and path patching against TransformerLens's own patching functions.

Tolerance: the batched engine and ``transformer_lens.patching`` run the same float32 operations
on differently shaped batches, so results agree to rounding: ``atol=1e-4`` on the raw mean logit
difference (values are O(1) on this model).
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tlp

from interpipe.circuits import (NormalizedLogitDiff, Patch, activation_patch, capture, patch_attn_out,
                                patch_head_out_all_pos, patch_head_out_by_pos, patch_head_pattern_all_pos,
                                patch_head_pattern_by_pos, patch_head_qkv_all_pos, patch_mlp_out, patch_resid_pre,
                                path_patch, run_variants)
from interpipe.circuits.patching import clean_into_clean
from interpipe.components import Component

ATOL = 1e-4


def raw_metric(batch) -> NormalizedLogitDiff:
    """The mean logit difference itself (clean=1, corrupted=0 leaves it unscaled)."""
    return NormalizedLogitDiff(batch.answer_ids, batch.foil_ids, clean=1.0, corrupted=0.0)


def tl_metric(batch):
    metric = raw_metric(batch)
    rows = torch.arange(batch.size)
    return lambda logits: metric(logits[rows, batch.answer_pos])


CASES = [
    (patch_resid_pre, {}, tlp.get_act_patch_resid_pre),
    (patch_attn_out, {}, tlp.get_act_patch_attn_out),
    (patch_mlp_out, {}, tlp.get_act_patch_mlp_out),
    (patch_head_out_all_pos, {}, tlp.get_act_patch_attn_head_out_all_pos),
    (patch_head_out_by_pos, {}, tlp.get_act_patch_attn_head_out_by_pos),
    (patch_head_qkv_all_pos, {"which": "q"}, tlp.get_act_patch_attn_head_q_all_pos),
    (patch_head_qkv_all_pos, {"which": "k"}, tlp.get_act_patch_attn_head_k_all_pos),
    (patch_head_qkv_all_pos, {"which": "v"}, tlp.get_act_patch_attn_head_v_all_pos),
    (patch_head_pattern_all_pos, {}, tlp.get_act_patch_attn_head_pattern_all_pos),
    (patch_head_pattern_by_pos, {}, tlp.get_act_patch_attn_head_pattern_by_pos),
]


@pytest.mark.parametrize("ours, extra, theirs", CASES,
                         ids=[f"{c[0].__name__}{'-' + c[1]['which'] if c[1] else ''}" for c in CASES])
def test_denoising_matches_transformer_lens(bridge, ioi_batch, ours, extra, theirs):
    batch = ioi_batch
    _, clean_cache = bridge.run_with_cache(batch.clean_tokens)
    expected = theirs(bridge, batch.corrupted_tokens, clean_cache, tl_metric(batch))
    result = ours(bridge, batch, metric=raw_metric(batch), memory_mb=2.0, **extra)
    assert result.values.shape == expected.shape
    torch.testing.assert_close(result.values, expected.cpu().float(), atol=ATOL, rtol=0)


def test_noising_matches_transformer_lens(bridge, sva_batch):
    batch = sva_batch
    _, corrupted_cache = bridge.run_with_cache(batch.corrupted_tokens)
    expected = tlp.get_act_patch_attn_head_out_all_pos(bridge, batch.clean_tokens, corrupted_cache, tl_metric(batch))
    result = patch_head_out_all_pos(bridge, batch, direction="noise", metric=raw_metric(batch))
    torch.testing.assert_close(result.values, expected.cpu().float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_path_patching_matches_direct_path(bridge, sva_batch, component):
    batch = sva_batch
    _, clean_cache = bridge.run_with_cache(batch.clean_tokens)
    _, corrupted_cache = bridge.run_with_cache(batch.corrupted_tokens)
    expected = tlp.get_act_patch_direct_path(bridge, batch.corrupted_tokens, clean_cache, corrupted_cache,
                                             tl_metric(batch), 0, 1, component=component, verbose=False)
    result = path_patch(bridge, batch, Component.head(0, 1), components=[component], metric=raw_metric(batch))
    torch.testing.assert_close(result.values[0, 1:], expected[1:].cpu().float(), atol=ATOL, rtol=0)


def test_clean_into_clean_changes_nothing(bridge, ioi_batch):
    assert clean_into_clean(bridge, ioi_batch).abs().max() < 1e-5


def test_chunking_does_not_change_results(bridge, sva_batch):
    metric = raw_metric(sva_batch)
    small = activation_patch(bridge, sva_batch, "z", ("layer", "pos", "head"), metric=metric, memory_mb=1e-6)
    large = activation_patch(bridge, sva_batch, "z", ("layer", "pos", "head"), metric=metric, memory_mb=4096)
    torch.testing.assert_close(small.values, large.values, atol=ATOL, rtol=0)


def test_ragged_batch_equals_mean_of_its_parts(bridge):
    from tests.circuits.conftest import batch_of

    ragged = batch_of(bridge, "ioi", n=12, same_length=False)
    assert len(set(ragged.answer_pos.tolist())) > 1, "the test needs prompts of several lengths"
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(bridge.cfg.n_layers)]
    sources, _ = capture(bridge, ragged.clean_tokens, ragged.answer_pos, hooks)
    variants = [[Patch(h, (None, head))] for h in hooks for head in range(bridge.cfg.n_heads)]
    per_prompt = run_variants(bridge, ragged.corrupted_tokens, ragged.answer_pos, variants, sources,
                              lambda lg: lg.gather(-1, ragged.answer_ids.expand(lg.shape[:-1])[..., None])[..., 0]
                              - lg.gather(-1, ragged.foil_ids.expand(lg.shape[:-1])[..., None])[..., 0])
    for b in (0, 5):  # each prompt alone, unpadded, through TransformerLens
        clean = ragged.clean_tokens[b: b + 1, : ragged.answer_pos[b] + 1]
        corrupted = ragged.corrupted_tokens[b: b + 1, : ragged.answer_pos[b] + 1]
        _, cache = bridge.run_with_cache(clean)
        metric = lambda lg: lg[0, -1, ragged.answer_ids[b]] - lg[0, -1, ragged.foil_ids[b]]  # noqa: E731
        expected = tlp.get_act_patch_attn_head_out_all_pos(bridge, corrupted, cache, metric).flatten()
        torch.testing.assert_close(per_prompt[:, b], expected.float(), atol=ATOL, rtol=0)
