"""The circuit study on every architecture family: known answers from TransformerLens, DLA completeness, refusals.

Each causal family of ``tests/architectures.py`` (GPT-2, GPT-NeoX with parallel attention/MLP and
partial rotary, Llama and Qwen2 with 4 query / 2 KV heads, OPT with learned offset positions) is
wrapped in a bridge once; on each, the batched patching grids equal ``transformer_lens.patching``,
the direct-logit-attribution terms add up to the logit difference, and k/v grids have one entry
per KV head. BERT (an encoder) and the undescribed families are refused when the model loads,
naming their ``model_type``. Tolerances as in ``test_patching.py``.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tlp

from interpipe.circuits import (activation_patch, attribution_patch, direct_logit_attribution,
                                load_bridge, logit_lens, path_patch, task_metric)
from interpipe.circuits.bridge import architecture
from interpipe.components import Component
from interpipe.models.arch import UnsupportedArchitecture
from tests.architectures import CAUSAL_FAMILIES, UNSUPPORTED
from tests.circuits.test_patching import ATOL, raw_metric, tl_metric

N_PROMPTS = 4


@pytest.fixture(scope="module")
def family_bridges(arch_folders) -> dict:
    return {family: load_bridge(arch_folders[family]) for family in CAUSAL_FAMILIES}


TASK = "colored_objects"  # answers and foils single tokens of the matrix's 600-token BPE (SVA's " are" / " is" are two)


def _batch(bridge, data_root, task: str = TASK):
    """Up to ``N_PROMPTS`` prompts of ``task`` whose clean and corrupted prompts tokenize to one length
    and whose answers and foils are single tokens (``models.tokens.answer_token_id``)."""
    from interpipe.circuits import make_batch
    from interpipe.data import load_task

    rows = load_task(data_root, task, "test")
    full = make_batch(bridge, rows["prompt"], rows["corrupted_prompt"], rows["answer"], rows["foil"], on_mismatch="skip")
    n = min(N_PROMPTS, full.size)
    return make_batch(bridge, full.prompts[:n], full.corrupted_prompts[:n],
                      [rows["answer"][rows["prompt"].index(p)] for p in full.prompts[:n]],
                      [rows["foil"][rows["prompt"].index(p)] for p in full.prompts[:n]])


@pytest.fixture(scope="module")
def family_batches(family_bridges, data_root) -> dict:
    return {family: _batch(bridge, data_root) for family, bridge in family_bridges.items()}


GRIDS = [  # (activation, axes, TransformerLens's function)
    ("resid_pre", ("layer", "pos"), tlp.get_act_patch_resid_pre),
    ("z", ("layer", "head"), tlp.get_act_patch_attn_head_out_all_pos),
    ("q", ("layer", "head"), tlp.get_act_patch_attn_head_q_all_pos),
    ("k", ("layer", "head"), tlp.get_act_patch_attn_head_k_all_pos),
    ("v", ("layer", "head"), tlp.get_act_patch_attn_head_v_all_pos),
    ("pattern", ("layer", "head"), tlp.get_act_patch_attn_head_pattern_all_pos),
]


PATTERN_EDITS_DISCARDED = ("opt",)  # the bridge delegates OPT's attention to HF: pattern hooks only observe


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_pattern_edits_reach_the_output_except_where_discarded(family_bridges, family_batches, family):
    from interpipe.circuits.patching import pattern_patching_support

    reason = pattern_patching_support(family_bridges[family], family_batches[family].clean_tokens)
    assert (reason is not None) == (family in PATTERN_EDITS_DISCARDED), reason


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
@pytest.mark.parametrize("activation, axes, theirs", GRIDS, ids=[g[0] for g in GRIDS])
def test_patching_matches_transformer_lens(family_bridges, family_batches, family, activation, axes, theirs):
    bridge, batch = family_bridges[family], family_batches[family]
    if activation == "pattern" and family in PATTERN_EDITS_DISCARDED:
        with pytest.raises(UnsupportedArchitecture, match=f"model_type='{family}'"):
            activation_patch(bridge, batch, activation, axes, metric=raw_metric(batch))
        return
    _, clean_cache = bridge.run_with_cache(batch.clean_tokens)
    expected = theirs(bridge, batch.corrupted_tokens, clean_cache, tl_metric(batch))
    if activation == "pattern":  # the grid must move somewhere, or agreement with TransformerLens says nothing
        assert float((expected - expected.flatten()[0]).abs().max()) > 1e-3
    result = activation_patch(bridge, batch, activation, axes, metric=raw_metric(batch), memory_mb=2.0)
    assert result.values.shape == expected.shape
    torch.testing.assert_close(result.values, expected.cpu().float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_kv_grids_have_one_entry_per_kv_head(family_bridges, family_batches, family):
    bridge, batch = family_bridges[family], family_batches[family]
    spec = architecture(bridge)
    metric = task_metric(bridge, batch)
    k = activation_patch(bridge, batch, "k", ("layer", "head"), metric=metric)
    q = activation_patch(bridge, batch, "q", ("layer", "head"), metric=metric)
    assert k.values.shape == (spec.n_layers, spec.n_kv_heads) and q.values.shape == (spec.n_layers, spec.n_heads)
    assert k.axes == (("layer", "kv_head") if spec.gqa else ("layer", "head")) and q.axes == ("layer", "head")
    if spec.gqa:  # labelled with the query group each KV head serves; estimates named the same
        assert spec.n_kv_heads < spec.n_heads and k.name == "k_kv_head"
        assert k.labels["kv_head"][1] == f"KV1 (Q{spec.group_size}-{2 * spec.group_size - 1})"
        estimate = attribution_patch(bridge, batch, [("k", ("layer", "head"))], metric=metric)
        assert estimate["k_kv_head"].values.shape == k.values.shape
        assert set(k.to_frame()["head"]) == set(range(spec.n_kv_heads))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_dla_terms_sum_to_the_logit_difference(family_bridges, family_batches, family):
    bridge, batch = family_bridges[family], family_batches[family]
    spec = architecture(bridge)
    result = direct_logit_attribution(bridge, batch)
    assert result.info["max_abs_residual_error"] < 1e-4
    assert float(result.values.sum()) == pytest.approx(result.info["logit_diff"], abs=1e-4)
    names = result.labels["component"]
    assert ("pos_embed" in names) == (spec.positions == "learned")
    assert len(names) == 1 + (spec.positions == "learned") + spec.n_layers * (spec.n_heads + 2) + 1
    lens = logit_lens(bridge, batch)
    assert float(lens.values[-1]) == pytest.approx(result.info["logit_diff"], abs=1e-4)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_path_patching_matches_direct_path_or_is_refused(family_bridges, family_batches, family):
    bridge, batch = family_bridges[family], family_batches[family]
    if family == "opt":  # the bridge gives OPT's attention no per-head q/k/v input fork
        with pytest.raises(UnsupportedArchitecture, match="model_type='opt'"):
            path_patch(bridge, batch, Component.head(0, 1), metric=raw_metric(batch))
        return
    _, clean_cache = bridge.run_with_cache(batch.clean_tokens)
    _, corrupted_cache = bridge.run_with_cache(batch.corrupted_tokens)
    expected = tlp.get_act_patch_direct_path(bridge, batch.corrupted_tokens, clean_cache, corrupted_cache,
                                             tl_metric(batch), 0, 1, component="q", verbose=False)
    result = path_patch(bridge, batch, Component.head(0, 1), metric=raw_metric(batch))
    torch.testing.assert_close(result.values[0, 1:], expected[1:].cpu().float(), atol=ATOL, rtol=0)
    spec = architecture(bridge)
    assert result.info["receiver_heads"] == [spec.n_heads, spec.n_kv_heads, spec.n_kv_heads]


@pytest.mark.parametrize("family", ("bert", *UNSUPPORTED))
def test_unsupported_families_are_refused_naming_the_model_type(arch_folders, family):
    with pytest.raises(UnsupportedArchitecture, match=f"model_type='{family}'"):
        load_bridge(arch_folders[family])


@pytest.mark.parametrize("family", ("llama", "opt"))
def test_study_runs_with_attribution_ranking(arch_folders, data_root, tmp_path, family):
    """The large-model settings (conf/circuits/smollm2.yaml) end to end; OPT notes the path patching it skips."""
    from interpipe.circuits import CircuitSettings, run_circuits
    from interpipe.io import read_json

    settings = CircuitSettings(tasks=[TASK], n_prompts=4, on_mismatch="skip", grids=["mlp_layer"],
                               attribution_grids=["mlp_layer", "z", "k"], rank_by="ablation", rank_with="attribution",
                               curve_points=4, single_ablations=False, neuron_ablation=0, overlap=[],
                               min_logit_gap=-1e9, random_circuits=2, completeness_heads=1, reference_prompts=4)
    metrics = run_circuits(settings, arch_folders[family], data_root, tmp_path, model_name=family)
    task = read_json(tmp_path / f"{family}-{TASK}" / "metrics.json")
    circuit = read_json(tmp_path / f"{family}-{TASK}" / "circuit.json")
    # 4 geometric sizes (with 0 and the pool: at most 5) and at most refine_steps bisected ones
    assert metrics[f"{TASK}/solved"] == 1 and len(circuit["selection_curve"]) == len(circuit["curve_k"]) <= 5 + settings.refine_steps
    assert circuit["k"] in circuit["curve_k"]
    import numpy as np
    import pandas as pd

    effects = pd.read_parquet(tmp_path / f"{family}-{TASK}" / "effects.parquet")  # the grids the number came from
    grid = effects[(effects["analysis"] == "mlp_out_layer") & (effects["direction"] == "denoising")]
    exact, estimate = (grid[grid["method"] == m].sort_values("layer")["effect"].to_numpy() for m in ("exact", "attribution"))
    assert len(exact) == len(estimate) == 2  # one value per layer
    assert task["attribution_corr_mlp_layer"] == pytest.approx(np.corrcoef(exact, estimate)[0, 1], abs=1e-5)
    assert ("notes" in circuit) == (family == "opt") and task.get("path_patching_skipped", 0) == (family == "opt")


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_prompts_are_the_tokenizers_own_ids(family_bridges, family, arch_folders):
    """No BOS of the study's own: the patched tokens are what the model's tokenizer gives (as in
    evaluate and attribute). The matrix tokenizer adds no BOS; TransformerBridge alone would prepend one."""
    from transformers import AutoTokenizer

    from interpipe.circuits import make_batch

    tokenizer = AutoTokenizer.from_pretrained(arch_folders[family])
    prompt = "When Mary and John went to the store , John gave a drink to"
    batch = make_batch(family_bridges[family], [prompt], [prompt], ["red"], ["blue"])  # single tokens of the matrix BPE
    expected = tokenizer(prompt)["input_ids"]
    assert batch.clean_tokens[0, : len(expected)].tolist() == expected


def test_toy_keeps_its_bos(tiny_toy_folder):
    from interpipe.circuits import load_bridge, make_batch
    from interpipe.models import load_model

    tokenizer = load_model(tiny_toy_folder).tokenizer
    prompt = "When Mary and John went to the store , John gave a drink to"
    batch = make_batch(load_bridge(tiny_toy_folder), [prompt], [prompt], ["Mary"], ["John"])
    assert batch.clean_tokens[0].tolist() == tokenizer(prompt)["input_ids"]
    assert batch.clean_tokens[0, 0] == tokenizer.bos_token_id
