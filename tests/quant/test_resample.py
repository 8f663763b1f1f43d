"""Intervals over calibration seeds and held-out examples, paired draws, and the survival frontier by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from interpipe.quant import frontier, resample
from interpipe.stats import seed_example_interval, seed_interval


def _frame(values: dict[int, list[float]], column: str = "ld", name: str = "ioi", **other) -> pd.DataFrame:
    """Per-example rows of one held-out set: ``values[seed]`` per example (and fixed other columns)."""
    rows = [{"calib_seed": s, "set": name, "example": i, column: v, **{k: c[i] for k, c in other.items()}}
            for s, vs in values.items() for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_without_example_variation_it_is_the_t_interval_over_seeds():
    per_seed = np.array([1.0, 2.5, 4.0])
    iv = seed_example_interval(per_seed, np.tile(per_seed, (300, 1)))
    t = seed_interval(list(per_seed))
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((t.estimate, t.low, t.high), abs=1e-8)


def test_with_one_seed_it_is_the_percentile_bootstrap_over_examples():
    x = np.array([0.0, 1.0, 1.0, 3.0, 5.0, 8.0])
    frame = _frame({0: list(x)}, "nll", "corpus", fp_nll=[0.0] * 6, tokens=[1.0] * 6)
    idx = resample.draws(frame, 4000)
    per_seed, reps = resample.replicates(frame, "loss_delta", idx)
    assert per_seed.tolist() == [x.mean()]
    iv = seed_example_interval(per_seed, reps)
    means = idx["corpus"][1:] @ x / len(x)  # (R,) the bootstrap means by hand, from the multiplicities
    assert (idx["corpus"].sum(1) == len(x)).all()  # every draw has as many examples as the set
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert iv.low < x.mean() < iv.high


def test_the_loss_is_a_ratio_of_sums_over_the_drawn_texts():
    frame = _frame({0: [2.0, 9.0]}, "nll", "corpus", fp_nll=[1.0, 3.0], tokens=[1.0, 3.0])
    idx = {"corpus": np.array([[1.0, 1.0], [0.0, 2.0], [2.0, 0.0]])}  # full set, then two hand-made draws
    per_seed, reps = resample.replicates(frame, "loss_delta", idx)
    assert per_seed.tolist() == pytest.approx([(11 - 4) / 4])
    assert reps[:, 0].tolist() == pytest.approx([(18 - 6) / 6, (4 - 2) / 2])


def test_seeds_share_one_draw_of_the_examples():
    """Crossed, not nested: with equal seeds every replicate has no spread over seeds, so the interval is the
    one-seed bootstrap (a nested draw would shrink it by averaging independent draws)."""
    values = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    one = resample.replicates(_frame({0: values}), "pairwise_acc/ioi", resample.draws(_frame({0: values})))
    two = resample.replicates(_frame({0: values, 1: values}), "pairwise_acc/ioi", resample.draws(_frame({0: values})))
    assert np.array_equal(two[1][:, 0], two[1][:, 1])
    a, b = seed_example_interval(*one), seed_example_interval(*two)
    assert (a.low, a.high) == pytest.approx((b.low, b.high))
    assert a.high - a.low > 0.2


def test_differences_to_a_baseline_are_paired_on_the_same_draw():
    """A method whose every example sits 0.3 above the baseline's differs by exactly 0.3 on every draw."""
    rng = np.random.default_rng(0)
    base = {s: list(rng.normal(size=10)) for s in (0, 1, 2)}
    fp = [2.0] * 10
    method = _frame({s: [v - 0.3 for v in vs] for s, vs in base.items()}, fp_ld=fp)
    baseline = _frame(base, fp_ld=fp)
    idx = resample.draws(method)
    diff = seed_example_interval(*resample.paired(method, baseline, "logit_diff_drop", idx))
    assert (diff.estimate, diff.low, diff.high) == pytest.approx((0.3, 0.3, 0.3))
    alone = seed_example_interval(*resample.replicates(method, "logit_diff_drop", idx))
    assert alone.high - alone.low > 0.3  # the examples' spread, which the pairing removes


def test_study_intervals_rest_on_the_seeds_own_values(tmp_path, data_root):
    """Per-seed values recomputed from examples.csv are the seeds.csv values; the paired difference's
    estimate is the mean of per-seed differences."""
    from interpipe.quant import QuantSettings, run_quantize

    folder = _toy(tmp_path, data_root)
    s = QuantSettings(methods=["rtn", "smoothquant"], bits=["w4a4"], calib_samples=4, eval_samples=6,
                      probe_samples=4, osplus_steps=3, calib_seeds=[0, 1], spread_bits=[])
    study = run_quantize(s, folder, data_root, tmp_path / "out")
    rtn, sq = study.settings
    assert all(math.isfinite(v) for v in study.metrics.values() if isinstance(v, float))  # metrics.json takes no NaN
    idx = resample.draws(sq.examples)
    for metric in ("loss_delta", "ppl_delta", "task_acc_drop", "logit_diff_drop", "pairwise_acc/ioi"):
        per_seed, _ = resample.replicates(sq.examples, metric, idx)
        assert per_seed == pytest.approx(sq.seeds[metric].to_numpy(), abs=1e-6), metric  # float32 means in seeds.csv
        assert sq.metrics[f"{metric}_ci_low"] <= sq.metrics[metric] <= sq.metrics[f"{metric}_ci_high"]
    diffs = sq.seeds["loss_delta"].to_numpy() - rtn.seeds["loss_delta"].to_numpy()
    assert sq.metrics["loss_delta_minus_rtn"] == pytest.approx(diffs.mean(), abs=1e-9)
    assert "pairwise_acc/ioi_minus_rtn_ci_low" in sq.metrics and "fp_pairwise_acc/ioi_ci_low" in sq.metrics
    head = pd.read_csv(tmp_path / "out" / "headline.csv")
    pair = head[(head.metric == "pairwise_acc") & (head.task == "ioi")]
    assert set(pair.method) == {"rtn-w4a4", "smoothquant-w4a4"} and pair.ci_low.notna().all()
    assert set(head[head.metric == "frontier_bits"].method) == {"rtn-frontier", "smoothquant-frontier"}
    assert (tmp_path / "out" / "frontier.csv").exists() and (tmp_path / "out" / "headline_frontier.png").exists()


def _toy(tmp_path, data_root):
    import torch
    from datasets import load_from_disk
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.models import describe, save_model_folder
    from interpipe.models.toy import build_tokenizer

    corpus = load_from_disk(str(data_root / "corpus"))
    tok = build_tokenizer(list(corpus["train"]["text"]) + list(corpus["validation"]["text"]))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4))
    return save_model_folder(tmp_path / "model", model, tok, describe(model, "tiny", "test", "causal_lm"))


def _setting(method: str, bits: str, acc: tuple[float, float, float], fp=(0.95, 0.9, 1.0), n_seeds: int = 3):
    key = "pairwise_acc/ioi"
    metrics = {key: acc[0], f"{key}_ci_low": acc[1], f"{key}_ci_high": acc[2], "n_seeds": n_seeds,
               f"fp_{key}": fp[0], f"fp_{key}_ci_low": fp[1], f"fp_{key}_ci_high": fp[2]}
    return SimpleNamespace(method=method, bits=bits, metrics=metrics)


def test_frontier_by_hand():
    solved, unsolved = (0.9, 0.7, 1.0), (0.55, 0.3, 0.8)
    settings = [_setting("rtn", "w8a8", solved), _setting("rtn", "w4a4", solved), _setting("rtn", "w6a6", unsolved),
                _setting("rtn", "w16a8", solved), _setting("rtn", "w16a6", solved),
                _setting("osplus", "w8a8", unsolved), _setting("osplus", "w6a6", solved)]
    rows = frontier.frontier_rows("m", settings, tasks=("ioi",)).set_index(["method", "series"])
    joint = rows.loc[("rtn", "weights+activations")]
    assert (joint.frontier_bits, joint.effective_bits, joint.below_bits) == ("w8a8", 8, "w6a6")
    assert (joint.pairwise_acc_ci_low, joint.below_pairwise_acc_ci_low) == (0.7, 0.3)
    assert "solved again below the frontier at w4a4" in joint.note  # not monotone: the frontier stops at w6a6
    act = rows.loc[("rtn", "activations")]
    assert (act.frontier_bits, act.effective_bits, act.below_bits) == ("w16a6", 6, "")
    none = rows.loc[("osplus", "weights+activations")]
    assert none.frontier_bits == "" and math.isnan(none.effective_bits) and none.below_bits == "w8a8"
    assert "solved at no setting" in none.note
    head = pd.DataFrame(frontier.headline_rows(rows.reset_index(), "trained"))
    assert set(head.method) == {"rtn-frontier", "rtn-frontier-a", "osplus-frontier"}
    assert head.set_index("method").loc["rtn-frontier-a", "value"] == 6


def test_shares_are_clipped_to_their_range():
    """Three seeds' t tails run past 1 for a share near 1; the interval stops at the bounds."""
    rows = _frame({0: [1.0] * 6, 1: [1.0] * 5 + [-1.0], 2: [1.0] * 3 + [-1.0] * 3}, fp_ld=[1.0] * 6)
    iv = resample.metric_interval(*resample.replicates(rows, "pairwise_acc/ioi", resample.draws(rows)),
                                  "pairwise_acc/ioi")
    assert iv.low >= 0.0 and iv.high == 1.0
    assert resample.bounds("pairwise_acc/ioi_minus_rtn") == (-1.0, 1.0) and resample.bounds("loss_delta") is None


def test_a_grid_without_a_quantized_setting_draws_no_frontier():
    """w16a16 quantizes nothing: no series, no panel, no figure (it used to ask matplotlib for 0 columns)."""
    from interpipe.quant import figures

    frame = pd.DataFrame([{"method": "rtn", "bits": "w16a16", "pairwise_acc/ioi": 0.9,
                           "pairwise_acc/ioi_ci_low": 0.8, "pairwise_acc/ioi_ci_high": 1.0}])
    assert figures.frontier(frame, ["ioi"], 0.5) is None
    drawn = figures.frontier(pd.concat([frame, frame.assign(bits="w8a8")]), ["ioi"], 0.5)
    assert drawn is not None and len(drawn.axes) == 1
