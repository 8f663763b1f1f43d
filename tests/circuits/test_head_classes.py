"""IOI head classes: OV copy scores and S-inhibition path patching against known answers.

* Copy score: the planted model's only writing head L1H2 reads the names' embedding subspace and
  writes it back times −4 (``conftest.planted_folder``): its OV circuit puts every name's own token
  last, so its copy score is 0 and its negative copy score 1; every other head writes nothing
  (all logits tie) and scores 0 both ways. Under grouped-query attention the OV logits equal a
  hand computation from the Hugging Face weights (``v_proj`` rows of KV head ``h // 2``).
* S-inhibition: a sender L0H1 is planted that copies the names it reads into a second subspace,
  which L1H2's query reads, so L1H2's attention to the names depends on L0H1. Its path into
  L1H2's query moves the metric; heads with a zero output projection move it by exactly nothing;
  and with a single receiver the value equals the q cell of :func:`path_patch` (checked against
  TransformerLens in ``test_patching.py``).
"""

from __future__ import annotations

import pytest
import torch

from interpipe.circuits import load_bridge, path_patch
from interpipe.circuits.copying import copy_scores, in_top_k, kv_head, name_rows, ov_logits
from interpipe.circuits.heads import ioi_positions
from interpipe.circuits.inhibition import s_inhibition_patch
from interpipe.circuits.patching import task_metric
from interpipe.components import Component
from interpipe.settings.circuits import CircuitSettings
from tests.circuits.conftest import PLANTED, planted_batch

SENDER = (0, 1)  # the planted S-inhibition sender


def _name_rows(bridge, batch):
    acts = bridge.run_with_cache(batch.clean_tokens)[1]
    return name_rows(batch, acts["blocks.1.hook_resid_pre"], ioi_positions(batch))


def test_top_k_counts_ties_against_the_target():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0, token 1: one larger logit and one tie = 2 others at least as large; row 1: 3 ties
    assert in_top_k(logits, torch.tensor([1, 0]), k=2).tolist() == [False, False]
    assert in_top_k(logits, torch.tensor([1, 0]), k=3).tolist() == [True, False]
    assert in_top_k(logits, torch.tensor([0, 0]), k=1).tolist() == [True, False]
    assert in_top_k(logits, torch.tensor([0, 0]), k=4).tolist() == [True, True]


def test_kv_head_of_grouped_query_heads():
    assert [kv_head(h, 9, 3) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [kv_head(h, 4, 4) for h in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="multiple"):
        kv_head(0, 9, 2)


def test_planted_head_copies_names_negatively(planted):
    batch = planted_batch(planted, n=12, n_reference=0)
    resid, names = _name_rows(planted, batch)
    heads = [(layer, head) for layer in range(planted.cfg.n_layers) for head in range(planted.cfg.n_heads)]
    scores = copy_scores(planted, resid, names, heads)
    assert scores[PLANTED] == (0.0, 1.0)
    assert all(scores[h] == (0.0, 0.0) for h in heads if h != PLANTED)


def test_gqa_ov_logits_equal_hand_computation_from_hf_weights(arch_folders):
    bridge = load_bridge(arch_folders["llama"])
    hf = bridge.original_model.model
    n_heads, d_head = bridge.cfg.n_heads, bridge.cfg.d_head
    n_kv = hf.config.num_key_value_heads
    resid = torch.randn(5, bridge.cfg.d_model, generator=torch.Generator().manual_seed(0))
    layer = 1
    attn = hf.layers[layer].self_attn
    for head in range(n_heads):
        kv = head // (n_heads // n_kv)
        with torch.no_grad():
            v = hf.layers[layer].input_layernorm(resid) @ attn.v_proj.weight[kv * d_head:(kv + 1) * d_head].T  # (row, d_head)
            out = v @ attn.o_proj.weight[:, head * d_head:(head + 1) * d_head].T  # (row, d_model)
            expected = bridge.original_model.lm_head(hf.norm(out))  # (row, d_vocab)
            got = ov_logits(bridge, layer, head, resid)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def inhibited(planted_folder, tmp_path_factory):
    """The planted model plus a sender L0H1 whose output steers L1H2's query toward the names."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(planted_folder).eval()
    d_model, n_heads = model.config.n_embd, model.config.n_head
    d_head = d_model // n_heads
    eye = torch.eye(d_head)
    with torch.no_grad():
        sender, receiver = model.transformer.h[SENDER[0]].attn, model.transformer.h[PLANTED[0]].attn
        qkv = sender.c_attn.weight  # (d_model, 3 * d_model): W_Q | W_K | W_V
        h = SENDER[1]
        qkv[:, h * d_head:(h + 1) * d_head] = 0.0  # uniform attention
        qkv[:, 2 * d_model + h * d_head:2 * d_model + (h + 1) * d_head] = 0.0
        qkv[:d_head, 2 * d_model + h * d_head:2 * d_model + (h + 1) * d_head] = eye  # read the names' subspace
        sender.c_proj.weight[h * d_head:(h + 1) * d_head, d_head:2 * d_head] = eye  # write it to dims d_head..2 d_head
        qkv = receiver.c_attn.weight
        r = PLANTED[1]
        qkv[:, r * d_head:(r + 1) * d_head] = 0.0
        qkv[d_head:2 * d_head, r * d_head:(r + 1) * d_head] = 8.0 * eye  # query: what the sender wrote
        qkv[:, d_model + r * d_head:d_model + (r + 1) * d_head] = 0.0
        qkv[:d_head, d_model + r * d_head:d_model + (r + 1) * d_head] = 8.0 * eye  # key: the name itself
    folder = tmp_path_factory.mktemp("inhibited_gpt2")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(planted_folder).save_pretrained(folder)
    return load_bridge(folder)


def test_s_inhibition_finds_the_planted_sender(inhibited):
    batch = planted_batch(inhibited, n=12, n_reference=0)
    metric = task_metric(inhibited, batch)
    senders = [(0, h) for h in range(inhibited.cfg.n_heads)] + [(1, 0)]  # L1H0: no later receiver
    result = s_inhibition_patch(inhibited, batch, senders, [PLANTED], "noise", metric)
    effect = result.effect()  # (layer, head)
    assert abs(float(effect[SENDER])) > 0.05
    assert all(float(effect[0, h]) == 0.0 for h in range(inhibited.cfg.n_heads) if (0, h) != SENDER)
    assert float(effect[1, 0]) == 0.0
    reference = path_patch(inhibited, batch, Component.head(*SENDER), components=["q"], direction="noise", metric=metric)
    assert float(result.values[SENDER]) == pytest.approx(float(reference.values[0, PLANTED[0], PLANTED[1]]), abs=1e-5)


def test_s_inhibition_with_two_receivers_is_not_the_sum_of_one(inhibited):
    batch = planted_batch(inhibited, n=12, n_reference=0)
    metric = task_metric(inhibited, batch)
    both = s_inhibition_patch(inhibited, batch, [SENDER], [PLANTED, (1, 0)], "noise", metric)
    only = s_inhibition_patch(inhibited, batch, [SENDER], [PLANTED], "noise", metric)
    # L1H0 writes nothing, so adding it as a receiver leaves the planted path's effect unchanged
    assert float(both.values[SENDER]) == pytest.approx(float(only.values[SENDER]), abs=1e-6)


def test_task_grids_replace_the_exact_grids_of_their_task_only():
    settings = CircuitSettings(grids=["resid_pre"], task_grids={"ioi": ["z"]})
    assert settings.for_task("ioi").grids == ["z"] and settings.for_task("ioi").task_grids == {"ioi": ["z"]}
    assert settings.for_task("sva") is settings
    with pytest.raises(ValueError, match="circuits.task_grids names unknown tasks"):
        CircuitSettings(task_grids={"iio": ["z"]})
    with pytest.raises(ValueError, match="task_grids have unknown entries"):
        CircuitSettings(task_grids={"ioi": ["zz"]})


def test_task_prompts_setting_is_validated():
    assert CircuitSettings(n_prompts=10, task_prompts={"ioi": 64}).prompts_for("ioi") == 64
    assert CircuitSettings(n_prompts=10, task_prompts={"ioi": 64}).prompts_for("sva") == 10
    with pytest.raises(ValueError, match="circuits.task_prompts names unknown tasks"):
        CircuitSettings(task_prompts={"iio": 64})
    with pytest.raises(ValueError, match="circuits.task_prompts has prompt counts below 1"):
        CircuitSettings(task_prompts={"ioi": 0})
    with pytest.raises(ValueError, match="circuits.inhibition_senders"):
        CircuitSettings(inhibition_senders=-1)
    with pytest.raises(ValueError, match="circuits.inhibition_prompts"):
        CircuitSettings(inhibition_prompts=0)


def test_composed_config_rejects_bad_task_prompts_before_any_model_loads():
    from stages import schema
    from tests.conftest import compose

    settings = schema.validate(compose(["model=smollm2", "circuits=smollm2"])).circuits
    assert settings.prompts_for("ioi") == 64 and settings.prompts_for("laundry_list") == settings.n_prompts
    assert settings.for_task("ioi").grids == ["z"] and settings.for_task("sva").grids == []  # task_grids: IOI only
    quantized = schema.validate(compose(["model=smollm2", "circuits=smollm2_quantized"])).circuits
    assert quantized.for_task("ioi").grids == []  # the exports' runs patch no exact grid
    with pytest.raises(ValueError, match="circuits.task_prompts names unknown tasks"):
        schema.validate(compose(["+circuits.task_prompts.iio=64"]))
    with pytest.raises(ValueError, match="circuits.task_prompts has prompt counts below 1"):
        schema.validate(compose(["model=smollm2", "circuits=smollm2", "circuits.task_prompts.ioi=0"]))
    with pytest.raises(Exception, match="task_prompts"):  # not an integer: the structured config refuses it
        compose(["+circuits.task_prompts.ioi=many"])


def _evidence(io, s, effect, copy=float("nan"), negative=float("nan"), dup=0.0, ind=0.0):
    return {"attn_end_io": io, "attn_end_s": s, "direct_effect": effect, "copy_score": copy,
            "negative_copy_score": negative, "attn_s2_s1": dup, "attn_s2_s1_next": ind}


def test_one_class_rule_finds_movers_that_copy_and_keeps_late_s_heads_apart():
    """SmolLM2's IOI evidence (ioi_heads.csv): L23H0 attends IO only 2.2x S but copies (1.0) and raises
    IO − S (+0.68): a name mover; L24H4 writes IO down; L23H3 attends S and writes it down (+2.08);
    a head whose copying was not measured gets no mover class."""
    import pandas as pd

    from interpipe.circuits.head_classes import receivers
    from interpipe.circuits.heads import CLASS_SCORES, classify

    rows = {"L23H0": _evidence(0.60, 0.27, 0.68, 1.0, 0.0), "L23H1": _evidence(0.57, 0.33, 0.44, 0.88, 0.0),
            "L24H4": _evidence(0.70, 0.21, -0.94, 0.0, 0.99), "L23H3": _evidence(0.05, 0.66, 2.08, 0.0, 1.0),
            "L25H2": _evidence(0.05, 0.81, -0.10, 0.0, 0.0), "L22H7": _evidence(0.57, 0.26, 0.06),
            "L28H1": _evidence(0.33, 0.35, 0.15, 0.13, 0.0), "L2H4": _evidence(0.0, 0.0, 0.0, dup=0.5)}
    classes = {name: classify(row) for name, row in rows.items()}
    assert classes == {"L23H0": "name mover", "L23H1": "name mover", "L24H4": "negative name mover",
                       "L23H3": "S suppressor", "L25H2": "S-attending (S-inhibition candidate)", "L22H7": "",
                       "L28H1": "", "L2H4": "duplicate token"}
    assert set(classes.values()) - {""} <= set(CLASS_SCORES)  # quant_interp reads every class's defining score
    frame = pd.DataFrame([{"layer": int(n[1:].split("H")[0]), "head": int(n.split("H")[1]), "class": c, **rows[n]}
                          for n, c in classes.items()])
    assert receivers(frame, 3) == [(23, 0), (23, 1)]  # the S-inhibition receivers are the movers, not L23H3
