"""Edge circuits (``interpipe.circuits.edges``): checks that cannot pass silently.

* the graph on every causal family of ``tests/architectures.py`` (grouped-query KV receivers,
  parallel blocks), and exact edge patching's two ends: no edge kept = the corrupted run, every
  edge kept = the clean run;
* a planted model whose answer travels one path (input → L1H2's values → logits): corrupting
  either of its two edges moves the output by the whole clean − corrupted gap, any other edge by
  zero, and EAP ranks exactly those two edges first;
* every hook the edge engine registers must run: a hook that never fires raises (the
  TransformerLens pitfall of per-head input hooks without ``use_split_qkv_input``);
* exact patching of one edge equals path patching of the same sender → receiver pair;
* on a model linear in the patched inputs, EAP-IG (many steps) equals exact edge patching;
* the rank correlation of EAP-IG with exact edge patching on a trained toy, reported.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from interpipe.circuits import load_bridge, path_patch, task_metric
from interpipe.circuits.bridge import architecture
from interpipe.circuits.edges import (EdgeGraph, edge_scores, patched_logits, sender_outputs, top_circuits)
from interpipe.circuits.edges import curves
from interpipe.circuits.edges.hooks import Fired
from interpipe.circuits.paths import path_patching_support
from interpipe.components import Component
from interpipe.models.arch import UnsupportedArchitecture
from tests.architectures import CAUSAL_FAMILIES
from tests.circuits.conftest import PLANTED, planted_batch

ATOL = 1e-4


def _prefix(batch) -> int:
    return min(batch.shared_prefix(), int(batch.answer_pos.min()))


def _single_edge_effects(bridge, graph, batch, edges=None):
    """Normalised metric − 1 of the clean run with one edge corrupted, for each edge ``[edge]``."""
    edges = graph.edges() if edges is None else edges
    metric = task_metric(bridge, batch)
    corrupted, _ = sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)
    weights = torch.zeros(len(edges), graph.n_receivers, graph.n_senders)
    weights[torch.arange(len(edges)), edges[:, 0], edges[:, 1]] = 1.0
    logits = patched_logits(bridge, graph, batch.clean_tokens, batch.answer_pos, corrupted, weights, _prefix(batch))
    return metric(logits) - 1.0  # (edge,)


# --- the graph and the two ends of the curve on every family ----------------------------------------

@pytest.fixture(scope="module")
def family_bridges(arch_folders) -> dict:
    return {family: load_bridge(arch_folders[family]) for family in CAUSAL_FAMILIES}


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_graph_and_curve_ends_on_every_family(family, family_bridges, data_root):
    from tests.circuits.test_architectures import _batch

    bridge = family_bridges[family]
    spec = architecture(bridge)
    graph = EdgeGraph.from_spec(spec)
    assert graph.n_senders == 1 + spec.n_layers * (spec.n_heads + 1)
    assert graph.n_receivers == spec.n_layers * (spec.n_heads + 2 * spec.n_kv_heads + 1) + 1
    mlp = graph.receiver_index(f"L1.mlp")
    same_layer_head = graph.sender_index("L1H0")
    assert bool(graph.allowed[mlp, same_layer_head]) == (spec.block_style == "pre_ln")  # parallel: the MLP reads x
    if spec.gqa:
        assert f"L1KV{spec.n_kv_heads - 1}.k" in {r.name for r in graph.receivers}
        assert len(graph.receiver_rows(1, "k")) == spec.n_kv_heads < spec.n_heads
    batch = _batch(bridge, data_root)
    if path_patching_support(bridge) is not None:  # no per-head q/k/v inputs on this family: refused, named
        with pytest.raises(UnsupportedArchitecture, match=spec.model_type):
            patched_logits(bridge, graph, batch.clean_tokens, batch.answer_pos,
                           sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)[0],
                           torch.ones(1, graph.n_receivers, graph.n_senders))
        return
    corrupted, corrupted_logits = sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)
    _, clean_logits = sender_outputs(bridge, graph, batch.clean_tokens, batch.answer_pos)
    assert (clean_logits - corrupted_logits).abs().max() > 1e-2  # the two ends differ
    weights = torch.stack([torch.ones(graph.n_receivers, graph.n_senders), torch.zeros(graph.n_receivers, graph.n_senders)])
    for prefix in (0, _prefix(batch)):
        out = patched_logits(bridge, graph, batch.clean_tokens, batch.answer_pos, corrupted, weights, prefix)
        torch.testing.assert_close(out[0], corrupted_logits, atol=ATOL, rtol=1e-4)  # no edge kept: the corrupted run
        torch.testing.assert_close(out[1], clean_logits, atol=ATOL, rtol=1e-4)  # every edge kept: the clean run


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_many_circuits_in_one_forward_equal_one_at_a_time(family, family_bridges, data_root):
    from tests.circuits.test_architectures import _batch

    bridge = family_bridges[family]
    if path_patching_support(bridge) is not None:
        pytest.skip("no per-head q/k/v inputs on this family (refusal tested above)")
    graph = EdgeGraph.from_spec(architecture(bridge))
    batch = _batch(bridge, data_root)
    corrupted, _ = sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)
    g = torch.Generator().manual_seed(0)
    weights = torch.stack([(torch.rand(graph.n_receivers, graph.n_senders, generator=g) < p).float()
                           for p in (0.05, 0.5, 0.95)])  # sparse kept / sparse moved paths of the engine both run
    together = patched_logits(bridge, graph, batch.clean_tokens, batch.answer_pos, corrupted, weights, _prefix(batch))
    for i in range(len(weights)):
        alone = patched_logits(bridge, graph, batch.clean_tokens, batch.answer_pos, corrupted, weights[i:i + 1])
        torch.testing.assert_close(together[i], alone[0], atol=ATOL, rtol=1e-4)


# --- the planted model: one path carries the answer --------------------------------------------------

def test_planted_path_edges_carry_the_whole_gap_and_no_other_edge_moves(planted):
    batch = planted_batch(planted)
    graph = EdgeGraph.from_spec(architecture(planted))
    layer, head = PLANTED
    path = {(graph.receiver_index(f"L{layer}H{head}.v"), 0),
            (graph.receiver_index("logits"), graph.sender_index(f"L{layer}H{head}"))}
    edges = graph.edges()
    effects = _single_edge_effects(planted, graph, batch, edges)  # (edge,): normalised metric − 1
    on_path = torch.tensor([(int(r), int(s)) in path for r, s in edges])
    assert int(on_path.sum()) == 2
    torch.testing.assert_close(effects[on_path], torch.full((2,), -1.0), atol=1e-4, rtol=0)  # the whole gap
    assert effects[~on_path].abs().max() < 1e-4, graph.edge_name(*edges[effects.abs().argmax()].tolist())
    scores = edge_scores(planted, graph, batch, task_metric(planted, batch), "eap")
    top = top_circuits(scores, graph.allowed, [2])[0]
    assert {tuple(e) for e in top.nonzero().tolist()} == path


# --- every hook must fire ----------------------------------------------------------------------------

def test_a_registered_hook_that_never_runs_raises():
    fired = Fired()
    fired.wrap("ran", lambda act, hook: act)[1](0, None)
    fired.wrap("never", lambda act, hook: act)
    with pytest.raises(RuntimeError, match="never"):
        fired.check()


def test_edge_patching_without_the_split_input_flags_cannot_return_numbers(bridge, ioi_batch, monkeypatch):
    """The TransformerLens pitfall: per-head q/k/v input hooks only run with ``use_split_qkv_input``."""
    from interpipe.circuits.edges import patching

    graph = EdgeGraph.from_spec(architecture(bridge))
    corrupted, _ = sender_outputs(bridge, graph, ioi_batch.corrupted_tokens, ioi_batch.answer_pos)
    monkeypatch.setattr(patching, "edge_hooks", lambda b: contextlib.nullcontext())  # flags left off
    with pytest.raises((RuntimeError, ValueError), match="hook"):
        patched_logits(bridge, graph, ioi_batch.clean_tokens, ioi_batch.answer_pos, corrupted,
                       torch.ones(1, graph.n_receivers, graph.n_senders))
    assert not getattr(bridge.cfg, "use_split_qkv_input", False)


# --- exact edge patching = path patching ---------------------------------------------------------------

def test_single_edge_equals_path_patching(bridge, ioi_batch):
    graph = EdgeGraph.from_spec(architecture(bridge))
    sender = Component.head(0, 1)
    path = path_patch(bridge, ioi_batch, sender, direction="noise")  # (component, layer, head): clean + corrupted sender
    cells = [(c, h) for c in ("q", "k", "v") for h in range(bridge.cfg.n_heads)]
    edges = torch.tensor([(graph.receiver_index(f"L1H{h}.{c}"), graph.sender_index(sender.name)) for c, h in cells])
    effects = _single_edge_effects(bridge, graph, ioi_batch, edges) + 1.0  # (edge,): the patched metric
    expected = torch.stack([path.values["qkv".index(c), 1, h] for c, h in cells])
    torch.testing.assert_close(effects.float(), expected.float(), atol=ATOL, rtol=1e-4)
    assert (expected - 1.0).abs().max() > 1e-3  # the edges do something


# --- linear model: EAP-IG = exact ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def linear_bridge(tiny_folder, tmp_path_factory):
    """The tiny GPT-2 made linear in every receiver input: layer norms with a huge epsilon (and a gain undoing
    it), uniform attention (zero queries), MLPs that write only their bias."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_folder, layer_norm_epsilon=1e8).eval()
    with torch.no_grad():
        for ln in [*(b.ln_1 for b in model.transformer.h), *(b.ln_2 for b in model.transformer.h), model.transformer.ln_f]:
            ln.weight.fill_(1e4)  # (x − mean) / sqrt(var + 1e8) · 1e4 = x − mean, to 1e-8 relative
        d = model.config.n_embd
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :d] = 0.0  # zero queries: uniform causal attention
            block.attn.c_attn.bias[:d] = 0.0
            block.mlp.c_proj.weight.zero_()
    folder = tmp_path_factory.mktemp("linear_gpt2")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_folder).save_pretrained(folder)
    return load_bridge(folder)


def test_eap_ig_equals_exact_patching_on_a_linear_model(linear_bridge):
    from tests.circuits.conftest import batch_of

    batch = batch_of(linear_bridge, "ioi")
    graph = EdgeGraph.from_spec(architecture(linear_bridge))
    edges = graph.edges()
    exact = _single_edge_effects(linear_bridge, graph, batch, edges)  # (edge,)
    assert exact.abs().max() > 1e-2  # edges matter
    for method, steps in (("eap-ig-inputs", 16), ("eap-ig-activations", 16), ("eap", 1)):
        scores = edge_scores(linear_bridge, graph, batch, task_metric(linear_bridge, batch), method, steps=steps)
        estimate = scores[edges[:, 0], edges[:, 1]]
        torch.testing.assert_close(estimate.float(), exact.float(), atol=2e-3 * float(exact.abs().max()), rtol=0,
                                   msg=method)


# --- rank correlation on a trained toy -----------------------------------------------------------------

def test_rank_correlation_of_eap_ig_with_exact_patching_on_the_toy(tiny_toy_folder, data_root, capsys):
    from scipy.stats import spearmanr

    from interpipe.circuits import batch_from_task

    toy = load_bridge(tiny_toy_folder)
    batch = batch_from_task(toy, data_root, "ioi", 8)
    graph = EdgeGraph.from_spec(architecture(toy))
    exact = _single_edge_effects(toy, graph, batch)
    edges = graph.edges()
    rho = {}
    for method in ("eap-ig-inputs", "eap"):
        s = edge_scores(toy, graph, batch, task_metric(toy, batch), method, steps=5)
        rho[method] = float(spearmanr(s[edges[:, 0], edges[:, 1]].numpy(), exact.numpy()).statistic)
    with capsys.disabled():
        print(f"\ntoy ({graph.n_edges} edges): Spearman with exact edge patching {rho}")
    assert rho["eap-ig-inputs"] > 0.2  # far from a random ranking (0)


# --- curves ------------------------------------------------------------------------------------------

def test_cpr_and_cmd_follow_mib_on_a_known_curve():
    budgets = [0.1, 0.5]
    full, empty = torch.full((4,), 3.0).numpy(), torch.zeros(4).numpy()
    ld = torch.tensor([[1.5] * 4, [3.0] * 4]).numpy()  # f = 0.5 at 10 %, 1 at 50 %
    s = curves.curve_summary(budgets, ld, empty, full)
    assert s["cpr"].estimate == pytest.approx(0.4 * 0.75 + 0.5 * 1.0)  # trapezoids over [0.1, 0.5], [0.5, 1]
    assert s["cmd"].estimate == pytest.approx(0.4 * 0.25)
    assert s["f0"].estimate == pytest.approx(0.5)


def test_budgets_pick_the_largest_scores_and_random_sets_are_nested():
    allowed = torch.ones(3, 4, dtype=torch.bool)
    allowed[0, 0] = False
    scores = torch.arange(12.0).reshape(3, 4) * torch.tensor([1.0, -1.0, 1.0, 1.0])
    top = top_circuits(scores, allowed, [1, 3])
    assert top[0].nonzero().tolist() == [[2, 3]] and int(top[1].sum()) == 3 and bool(top[1][2, 1])  # |−9| ranks
    rand = curves.random_circuits(allowed, [2, 5], seed=1)
    assert bool((rand[0] <= rand[1]).all()) and not bool(rand[:, 0, 0].any())


def test_gpt2_small_has_mibs_edge_count():
    """MIB counts 32,491 edges in GPT-2 small (its EDGE_COUNTS["gpt2"]); the graph here is the same one."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.models.arch import describe_architecture

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    assert EdgeGraph.from_spec(describe_architecture(model)).n_edges == 32491
