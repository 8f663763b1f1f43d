"""DLA, attribution patching, ablations, circuit discovery, results and bad input."""

from __future__ import annotations

import pytest
import torch

from interpipe.circuits import (CircuitResult, CircuitSettings, Component, Patch, ablate, ablate_heads,
                                activation_patch, attribution_patch, circuit_overlap, correlation,
                                direct_logit_attribution, faithfulness_curve, logit_lens, make_batch, path_patch,
                                rank_components, run_variants, select_circuit, task_metric)
from interpipe.circuits.metrics import logit_diff
from interpipe.io import OutputExistsError


def test_dla_terms_plus_error_sum_to_logit_difference(bridge, ioi_batch):
    result = direct_logit_attribution(bridge, ioi_batch)
    info = result.info
    assert float(result.values.sum()) + info["residual_error"] == pytest.approx(info["logit_diff"], abs=1e-5)
    # the writes add up to the residual stream, so the decomposition itself is exact up to rounding
    assert info["max_abs_residual_error"] < 1e-4
    assert len(result.labels["component"]) == 2 + bridge.cfg.n_layers * (bridge.cfg.n_heads + 2) + 1


def test_logit_lens_ends_at_the_model_output(bridge, sva_batch):
    lens = logit_lens(bridge, sva_batch)
    metric = task_metric(bridge, sva_batch)
    assert float(lens.values[-1]) == pytest.approx(metric.clean, abs=1e-4)
    assert lens.values.shape == (bridge.cfg.n_layers + 1,)


def test_attribution_patching_tracks_exact_head_patching(bridge, sva_batch):
    metric = task_metric(bridge, sva_batch)
    estimate = attribution_patch(bridge, sva_batch, [("z", ("layer", "head"))], metric=metric)["z_head"]
    exact = activation_patch(bridge, sva_batch, "z", ("layer", "head"), metric=metric)
    assert correlation(estimate, exact) > 0.7


def test_empty_ablation_is_the_clean_run_and_zero_ablation_changes_it(bridge, sva_batch):
    metric = task_metric(bridge, sva_batch)
    out = ablate(bridge, sva_batch, [[], [Component("head", 0, 0), Component("mlp", 1)]], "zero", metric=metric)
    assert float(out[0, 0]) == pytest.approx(1.0, abs=1e-4)  # normalised: clean = 1
    assert float(out[0, 3]) == pytest.approx(0.0, abs=1e-5)  # KL from the clean run
    assert float(out[1, 3]) > 0


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_head_ablation_sweep_matches_single_runs(bridge, sva_batch, kind):
    metric = task_metric(bridge, sva_batch)
    sweep = ablate_heads(bridge, sva_batch, kind, metric=metric)
    single = ablate(bridge, sva_batch, [[Component("head", 1, 2)]], kind, metric=metric)[0, 0]
    assert float(sweep.values[1, 2]) == pytest.approx(float(single), abs=1e-4)


def test_faithfulness_curve_ends_at_one_and_top_k_takes_the_first_k(bridge, sva_batch):
    from interpipe.circuits import Scorer
    from interpipe.circuits.scoring import pool

    ranking = rank_components(torch.rand(bridge.cfg.n_layers, bridge.cfg.n_heads))
    scorer = Scorer(bridge, sva_batch, pool(bridge))
    curve = faithfulness_curve(scorer, ranking, list(range(len(ranking) + 1)))
    assert len(curve) == len(ranking) + 1 and curve[-1]["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    circuit = select_circuit(scorer, ranking, "top_k", top_k=3)
    assert circuit.components == [n for n, _ in ranking[:3]]
    assert circuit.faithfulness == pytest.approx(curve[3]["faithfulness"], abs=1e-6)


def test_overlap_is_heads_in_common_over_heads_in_either():
    assert circuit_overlap(["L0H0", "L1H1"], ["L1H1"]) == 0.5
    assert circuit_overlap([], []) == 0.0


def test_result_round_trip_and_no_overwrite(tmp_path):
    result = CircuitResult("r", torch.arange(6.0).reshape(2, 3), ("layer", "pos"), {"pos": ["a", "b", "c"]}, 1.0,
                           {"task": "ioi"})
    result.save(tmp_path / "r")
    back = CircuitResult.load(tmp_path / "r")
    assert torch.equal(back.values, result.values) and back.axes == result.axes and back.info == result.info
    with pytest.raises(OutputExistsError):
        result.save(tmp_path / "r")
    frame = result.to_frame()
    assert list(frame.columns[:7]) == ["analysis", "method", "direction", "layer", "head", "position", "effect"]
    assert frame["effect"].tolist() == [v - 1.0 for v in range(6)]


def test_mismatched_lengths_name_the_prompt(bridge):
    with pytest.raises(ValueError, match="The cats near the car"):
        make_batch(bridge, ["The cats near the car"], ["The cats near the old car"], ["are"], ["is"])
    batch = make_batch(bridge, ["The cats near the car", "The cat near the car"],
                       ["The cats near the old car", "The cats near the car"], ["are", "is"], ["is", "are"],
                       on_mismatch="skip")
    assert batch.size == 1 and batch.skipped == 1


def test_unknown_hook_is_named(bridge, sva_batch):
    with pytest.raises(ValueError, match="blocks.0.attn.hook_zz"):
        run_variants(bridge, sva_batch.corrupted_tokens, sva_batch.answer_pos,
                     [[Patch("blocks.0.attn.hook_zz", (None, 0))]], {}, lambda lg: lg.mean((-1, -2)))
    with pytest.raises(ValueError, match="unknown activation"):
        activation_patch(bridge, sva_batch, "zz", ("layer", "head"))


def test_head_index_out_of_range(bridge, sva_batch):
    n_heads = bridge.cfg.n_heads
    with pytest.raises(ValueError, match=f"head index {n_heads}"):
        path_patch(bridge, sva_batch, Component.head(0, n_heads))
    with pytest.raises(ValueError, match=f"head index {n_heads}"):
        ablate(bridge, sva_batch, [[Component("head", 0, n_heads)]])
    hook = "blocks.0.attn.hook_z"
    with pytest.raises(ValueError, match="head index 9"):
        run_variants(bridge, sva_batch.corrupted_tokens, sva_batch.answer_pos, [[Patch(hook, (None, 9))]],
                     {hook: torch.zeros(1)}, lambda lg: logit_diff(lg, sva_batch.answer_ids, sva_batch.foil_ids).mean(-1))


def test_model_the_bridge_cannot_wrap_is_named(tmp_path):
    from interpipe.circuits import load_bridge

    with pytest.raises((ValueError, FileNotFoundError, OSError), match="no_model_here|does not exist"):
        load_bridge(tmp_path / "no_model_here")


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="circuits.grids"):
        CircuitSettings(grids=["resid_pre", "nope"])
    with pytest.raises(ValueError, match="circuits.ablation"):
        CircuitSettings(ablation="median")
