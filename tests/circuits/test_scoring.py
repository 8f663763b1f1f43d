"""Template-aligned mean ablation, circuit scoring, the random baseline and the selection rule.

Known answers come from the planted model (``conftest.planted_folder``: only L1H2 writes to the
residual stream, so its IOI circuit is {L1H2}) and from hand computations with TransformerLens's
own ``run_with_cache`` / ``run_with_hooks``, never from this package's earlier output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpipe.circuits import Scorer, activation_patch, random_circuits, rank_components, score_heldout
from interpipe.circuits import select_circuit, smallest_above, task_metric
from interpipe.circuits.ablation import ablation_sources
from interpipe.circuits.metrics import logit_diff
from interpipe.circuits.scoring import pool
from interpipe.components import Component

H = Component.head
from interpipe.stats import Interval
from tests.circuits.conftest import PLANTED, planted_batch

HOOK = "blocks.{}.attn.hook_z".format(PLANTED[0])


def _hand_means(bridge, batch, hook: str) -> torch.Tensor:
    """Per prompt, the mean of ``hook`` over the reference prompts of its template and length (unpadded runs)."""
    means = []
    for g in batch.groups:
        rows = [i for i, r in enumerate(batch.reference_groups) if r == g]
        acts = []
        for i in rows:
            n = int(batch.reference_pos[i]) + 1
            _, cache = bridge.run_with_cache(batch.reference_tokens[i: i + 1, :n])
            acts.append(cache[hook][0])  # (pos, head, d_head)
        mean = torch.stack(acts).mean(0)
        pad = torch.zeros(batch.n_pos - mean.shape[0], *mean.shape[1:])
        means.append(torch.cat([mean, pad]))
    return torch.stack(means)  # (batch, pos, head, d_head)


def test_mean_ablation_is_aligned_by_template_and_position(planted):
    batch = planted_batch(planted)
    assert len(set(batch.groups)) >= 4  # several templates and lengths in one batch
    source = ablation_sources(planted, batch, [HOOK], "mean")[HOOK]  # (batch, pos, head, d_head)
    expected = _hand_means(planted, batch, HOOK)
    for b in range(batch.size):
        n = int(batch.answer_pos[b]) + 1
        torch.testing.assert_close(source[b, :n], expected[b, :n], atol=1e-5, rtol=1e-5)
    # two prompts of one template share their means; prompts of another template do not
    g = batch.groups
    same = next((i, j) for i in range(len(g)) for j in range(i + 1, len(g)) if g[i] == g[j])
    other = next(j for j in range(len(g)) if g[j] != g[same[0]])
    assert torch.equal(source[same[0]], source[same[1]]) and not torch.equal(source[same[0]], source[other])


def test_planted_circuit_is_fully_faithful_and_its_ablation_matches_a_hand_hook(planted):
    batch = planted_batch(planted)
    scorer = Scorer(planted, batch, pool(planted))
    ld, _ = scorer.circuits([[H(1, 2)], [], [H(0, 0), H(1, 3)]])
    faithful = scorer.faithfulness(ld[0])
    assert faithful["faithfulness"].estimate == pytest.approx(1.0, abs=1e-5)
    assert faithful["faithfulness_per_prompt"].estimate == pytest.approx(1.0, abs=1e-4)
    # without L1H2 the circuit is the planted head mean-ablated: compare with a hand-written hook
    means = _hand_means(planted, batch, HOOK)
    layer, head = PLANTED

    def ablate(z, hook):
        z[:, :, head] = means[:, : z.shape[1], head]
        return z

    logits = planted.run_with_hooks(batch.clean_tokens, fwd_hooks=[(HOOK, ablate)])
    rows = torch.arange(batch.size)
    hand = logit_diff(logits[rows, batch.answer_pos], batch.answer_ids, batch.foil_ids).detach().numpy()
    np.testing.assert_allclose(ld[1], hand, atol=1e-4)
    np.testing.assert_allclose(ld[2], ld[1], atol=1e-5)  # heads that write nothing change nothing
    empty = scorer.faithfulness(ld[1])["faithfulness"]
    assert empty.high < 0.5 and empty.low <= empty.estimate <= empty.high


def test_random_baseline_has_the_circuit_size_and_the_value_of_its_draws(planted):
    batch = planted_batch(planted)
    scorer = Scorer(planted, batch, pool(planted))
    draws = random_circuits(scorer.components, [Component.head(1, 2), Component.head(0, 1)], 20, seed=0)
    assert len(draws) == 20 and all(len(set(d)) == 2 for d in draws)
    assert len({tuple(sorted(d)) for d in draws}) > 5  # drawn, not repeated
    metrics, table = score_heldout(scorer, [H(1, 2), H(0, 1)], n_random=20, completeness_heads=2, seed=0)
    # a draw is fully faithful exactly when it holds L1H2; otherwise it scores the planted head ablated
    ld, _ = scorer.circuits([[]])
    empty = float(np.mean(ld[0]) / np.mean(scorer.clean_ld))
    expected = np.mean([1.0 if Component.head(1, 2) in d else empty for d in draws])
    assert metrics["random_draws"] == 20
    assert metrics["random_faithfulness"] == pytest.approx(expected, abs=1e-5)
    assert metrics["random_faithfulness_ci_low"] < metrics["random_faithfulness"] < metrics["random_faithfulness_ci_high"]
    assert metrics["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["excess_over_random_ci_low"] > 0  # the planted circuit beats its random baseline
    # minimality: removing L1H2 from the circuit matters, removing L0H1 does not; complete (same as in M)
    by_head = {r["head"].name: r for r in table}
    assert by_head["L1H2"]["minimality"] > 1.0 and abs(by_head["L0H1"]["minimality"]) < 1e-4
    assert metrics["completeness_gap_max"] < 1e-4


def test_selection_picks_the_planted_head_on_one_half(planted):
    batch = planted_batch(planted)
    select, heldout = batch.halves()
    assert select.size + heldout.size == batch.size
    assert not set(select.prompts) & set(heldout.prompts)
    metric = task_metric(planted, select)
    effects = activation_patch(planted, select, "z", ("layer", "head"), metric=metric).effect().abs()
    ranking = rank_components(effects)
    assert ranking[0][0] == Component.head(1, 2) and all(abs(score) < 1e-6 for _, score in ranking[1:])
    circuit = select_circuit(Scorer(planted, select, pool(planted)), ranking, "faithfulness", target=0.8)
    assert circuit.components == [Component.head(1, 2)] and circuit.info["target_reached"] == 1
    assert circuit.curve[0]["k"] == 0 and circuit.curve[0]["high"] < 0.8  # the empty circuit does not qualify
    # a target no circuit smaller than the model reaches: the whole pool, flagged as not reached
    whole = select_circuit(Scorer(planted, select, pool(planted)), ranking, "faithfulness", target=1.5)
    assert len(whole.components) == len(ranking) and whole.info["target_reached"] == 0


def test_smallest_above_needs_the_whole_interval_above_the_target():
    iv = lambda est, low: Interval(est, low, est + 0.1, 16)  # noqa: E731
    ks = [0, 1, 2, 4, 8]
    # k=1 has a point estimate above the target but an interval reaching below it; the curve is not monotone
    curve = [iv(0.1, 0.0), iv(0.9, 0.6), iv(0.85, 0.81), iv(0.5, 0.3), iv(1.0, 0.95)]
    assert smallest_above(ks, curve, 0.8) == 2
    assert smallest_above(ks, curve, 0.9) == 8
    assert smallest_above(ks, curve, 0.99) is None


def test_ablation_attribution_ranks_the_planted_head_first_and_tracks_exact_ablation(planted, bridge, sva_batch):
    from interpipe.circuits import ablate_heads, attribution_patch, correlation

    batch = planted_batch(planted)
    metric = task_metric(planted, batch)
    estimate = attribution_patch(planted, batch, [("z", ("layer", "head"))], metric=metric, ablation="mean")["z_head"]
    effect = estimate.effect()  # (layer, head): estimated change of the normalised LD when ablated alone
    assert estimate.info["direction"] == "mean" and estimate.baseline == 1.0
    assert float(effect[PLANTED]) < -0.2  # removing the planted head lowers the metric (first order: less than exact)
    others = effect.clone()
    others[PLANTED] = 0.0
    assert float(others.abs().max()) < 1e-6  # heads that write nothing have no gradient path
    metric = task_metric(bridge, sva_batch)
    rough = attribution_patch(bridge, sva_batch, [("z", ("layer", "head"))], metric=metric, ablation="mean")["z_head"]
    assert correlation(rough, ablate_heads(bridge, sva_batch, "mean", metric=metric)) > 0.7


def test_the_whole_pool_scores_as_the_full_model(planted):
    batch = planted_batch(planted, n=12)
    scorer = Scorer(planted, batch, pool(planted))
    metrics, _ = score_heldout(scorer, list(scorer.components), n_random=0)
    assert metrics["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["circuit_accuracy"] == metrics["heldout_accuracy"]  # one accuracy rule for circuit and model
    assert metrics["heldout_logit_diff"] == pytest.approx(float(np.mean(scorer.clean_ld)))


def test_ioi_head_evidence_reads_the_patterns_at_io_s1_s2(bridge, ioi_batch):
    from interpipe.circuits.heads import head_evidence, ioi_positions

    pos = ioi_positions(ioi_batch)
    rows = torch.arange(ioi_batch.size)
    assert torch.equal(ioi_batch.clean_tokens[rows, pos["io"]], ioi_batch.answer_ids)
    assert torch.equal(ioi_batch.clean_tokens[rows, pos["s1"]], ioi_batch.foil_ids)
    assert torch.equal(ioi_batch.clean_tokens[rows, pos["s2"]], ioi_batch.foil_ids) and bool((pos["s2"] > pos["s1"]).all())
    direct = torch.arange(bridge.cfg.n_layers * bridge.cfg.n_heads, dtype=torch.float).reshape(bridge.cfg.n_layers, -1)
    table = {(r["layer"], r["head"]): r for r in head_evidence(bridge, ioi_batch, direct)}
    _, cache = bridge.run_with_cache(ioi_batch.clean_tokens)
    pattern = cache["blocks.1.attn.hook_pattern"][:, 3]  # (batch, q_pos, k_pos)
    end = pattern[rows, ioi_batch.answer_pos]  # (batch, k_pos)
    assert table[(1, 3)]["attn_end_io"] == pytest.approx(float(end[rows, pos["io"]].mean()), abs=1e-6)
    s = end[rows, pos["s1"]] + end[rows, pos["s2"]]
    assert table[(1, 3)]["attn_end_s"] == pytest.approx(float(s.mean()), abs=1e-6)
    dup = pattern[rows, pos["s2"], pos["s1"]]
    assert table[(1, 3)]["attn_s2_s1"] == pytest.approx(float(dup.mean()), abs=1e-6)
    assert table[(1, 3)]["direct_effect"] == float(direct[1, 3])


def test_identical_ablations_run_once_and_keep_their_order(planted):
    scorer = Scorer(planted, planted_batch(planted, n=8), pool(planted))
    a, b = [Component("head", 1, 2)], [Component("head", 0, 1), Component("head", 1, 2)]
    ld, _ = scorer.run([a, b, a, list(reversed(b))])
    separate = np.concatenate([scorer.run([a])[0], scorer.run([b])[0]])
    np.testing.assert_allclose(ld, separate[[0, 1, 0, 1]], atol=1e-6)


def test_solved_reads_the_gap_and_pairwise_accuracy_counts_answer_above_foil_not_top1():
    """A model that ranks the answer above the foil on 3 of 4 prompts but never first (as SmolLM2 on
    Colored Objects, which continues with " is"): top-1 accuracy 0, pairwise accuracy 0.75."""
    from types import SimpleNamespace

    from interpipe.circuits.study import _baselines

    logits = torch.zeros(4, 5)  # (batch, vocab): token 0 always first, answer 1, foil 2
    logits[:, 0] = 10.0
    logits[:, 1] = torch.tensor([3.0, 4.0, 5.0, 0.0])
    logits[:, 2] = torch.tensor([1.0, 1.0, 1.0, 2.0])
    batch = SimpleNamespace(size=4, skipped=0, groups=[0, 0, 1, 1], reference_groups=[0, 1],
                            answer_ids=torch.tensor([1, 1, 1, 1]), foil_ids=torch.tensor([2, 2, 2, 2]))
    lds = np.stack([logit_diff(logits, batch.answer_ids, batch.foil_ids).numpy(), np.zeros(4)])  # (2, batch)
    out = _baselines(batch, SimpleNamespace(corrupted=0.0), logits, lds, min_gap=0.5)
    assert out["clean_accuracy"] == 0.0 and out["clean_pairwise_accuracy"] == 0.75
    assert out["clean_pairwise_accuracy_ci_low"] <= 0.75 <= out["clean_pairwise_accuracy_ci_high"]
    assert out["logit_gap"] == pytest.approx(np.mean([2.0, 3.0, 4.0, -2.0]))
    assert out["solved"] == int(out["logit_gap_ci_low"] >= 0.5)
