"""The solved rule and undefined numbers on hand-made inputs: known verdicts, NaN with a reason, never 0.0."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from interpipe.quant_interp import verdict
from interpipe.quant_interp.inputs import Pair
from interpipe.stats import Interval


def test_solved_means_the_accuracy_interval_lies_above_chance():
    right = np.array([1.2, 0.4, 2.0, 0.9, 1.5, 0.3, 0.8, 1.1, 2.2, 0.6])  # (prompt,) every answer above the foil
    assert verdict.solves(verdict.pairwise_accuracy(right, 500), 0.5)
    assert not verdict.solves(verdict.pairwise_accuracy(-right, 500), 0.5)  # every prompt picks the foil
    half = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)  # (prompt,) a coin: 20 of 40
    coin = verdict.pairwise_accuracy(half, 500)
    assert coin.estimate == 0.5 and not verdict.solves(coin, 0.5)
    mostly = verdict.pairwise_accuracy(np.where(np.arange(40) % 8 == 0, -1.0, 1.0), 500)  # 35 of 40
    assert mostly.estimate == pytest.approx(35 / 40) and verdict.solves(mostly, 0.5)
    assert not verdict.solves(Interval(0.9, 0.5, 1.0, 12), 0.5)  # the bound itself is not above chance
    assert not verdict.solves(Interval(math.nan, math.nan, math.nan, 0), 0.5)  # no prompts: nothing is solved


def test_no_circuit_reasons():
    assert verdict.no_circuit_reason(88, 270, True) == ""
    assert "whole model (270 of 270" in verdict.no_circuit_reason(270, 270, True)
    assert "unsolved by its own test" in verdict.no_circuit_reason(0, 270, False)
    assert "unsolved by its own test" in verdict.no_circuit_reason(0, 0.0, True)
    assert verdict.small_class_reason(5, 5) == "" and "2 in the FP class" in verdict.small_class_reason(2, 5)


def _pair_result(solved: bool, undefined: dict[str, str]):
    from interpipe.quant_interp.study import PairResult

    nan = verdict.undefined_interval()
    faith = Interval(1.1, 0.9, 1.3, 32) if solved else nan
    intervals = {"quantized_pairwise_accuracy": Interval(0.9, 0.8, 1.0, 32) if solved else Interval(0.4, 0.25, 0.6, 32),
                 "quantized_clean_logit_diff": Interval(1.0, 0.5, 1.5, 32), "fp_clean_logit_diff": Interval(2.0, 1.5, 2.5, 32),
                 "clean_logit_diff_retained": Interval(0.5, 0.3, 0.7, 32), "effect_correlation": nan if not solved
                 else Interval(0.8, 0.7, 0.9, 270)}
    if solved:
        intervals |= {"fp_circuit_faithfulness": faith, "fp_circuit_random_faithfulness": Interval(0.0, -0.1, 0.1, 20)}
    numbers = {"fp_circuit_heads": 88.0, "quantized_circuit_heads": 40.0 if solved else math.nan,
               "circuit_jaccard": 0.3 if solved else math.nan, "circuit_containment": 0.4 if solved else math.nan,
               "quantized_solved": float(solved), "min_pairwise_accuracy": 0.5}
    survival = {"name_mover": verdict.undefined_interval(2), "induction": Interval(0.6, 0.2, 1.0, 5) if solved else nan}
    return PairResult(Pair("m", "m-rtn-w6a6"), intervals, numbers, pd.DataFrame(), pd.DataFrame(), survival,
                      info={"task": "ioi"}, undefined=undefined)


def test_an_unsolved_pair_writes_nan_with_reasons_never_zero():
    from interpipe.quant_interp.tables import flat_metrics, headline_rows

    why = "unsolved: the quantized model's pairwise IOI accuracy 0.4 [0.25, 0.6] does not lie above 0.5 (chance)"
    undefined = {k: why for k in ("fp_circuit_faithfulness", "circuit_jaccard", "circuit_containment",
                                  "quantized_circuit_heads", "effect_correlation", "name_mover_survival",
                                  "induction_survival")}
    result = _pair_result(False, undefined)
    assert result.verdict == "unsolved"
    rows = pd.DataFrame(headline_rows(result, "ioi")).set_index("metric")
    for metric in ("fp_circuit_faithfulness", "circuit_jaccard", "circuit_containment", "circuit_heads",
                   "effect_correlation", "name_mover_survival", "induction_survival"):
        assert math.isnan(rows.loc[metric, "value"]) and rows.loc[metric, "reason"] == why, metric
    assert rows.loc["quantized_pairwise_accuracy", "value"] == 0.4 and rows.loc["quantized_pairwise_accuracy", "reason"] == ""
    assert rows.loc["quantized_pairwise_accuracy", "baseline_value"] == 0.5
    assert set(rows["verdict"]) == {"unsolved"}
    metrics = flat_metrics([result])
    assert metrics["m-rtn-w6a6/quantized_solved"] == 0.0 and metrics["m-rtn-w6a6/clean_logit_diff_retained"] == 0.5
    for key in ("fp_circuit_faithfulness", "circuit_jaccard", "circuit_containment", "quantized_circuit_heads",
                "effect_correlation", "heads/name_mover_survival", "heads/induction_survival"):
        assert f"m-rtn-w6a6/{key}" not in metrics, key  # undefined: left out, never 0.0


def test_a_solved_pair_keeps_its_ratios_and_only_small_classes_lose_their_interval():
    from interpipe.quant_interp.tables import flat_metrics, headline_rows

    result = _pair_result(True, {"name_mover_survival": "too few heads: 2 in the FP class, an interval needs 5"})
    rows = pd.DataFrame(headline_rows(result, "ioi")).set_index("metric")
    assert set(rows["verdict"]) == {"solved"}
    faith = rows.loc["fp_circuit_faithfulness"]
    assert (faith["value"], faith["ci_low"], faith["ci_high"], faith["baseline_value"], faith["reason"]) == (
        1.1, 0.9, 1.3, 0.0, "")
    assert math.isnan(rows.loc["name_mover_survival", "value"])
    assert rows.loc["name_mover_survival", "reason"].startswith("too few heads")
    assert rows.loc["induction_survival", "value"] == 0.6 and rows.loc["induction_survival", "reason"] == ""
    metrics = flat_metrics([result])
    assert metrics["m-rtn-w6a6/heads/induction_survival_ci_low"] == 0.2 and "m-rtn-w6a6/heads/name_mover_survival" not in metrics
