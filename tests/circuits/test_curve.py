"""Known answers for the circuit summaries: chance overlap of random head sets, CPR / CMD of a hand-made
curve, the refined selection size, and which circuits the headline reports."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from interpipe.circuits.discovery import chance_overlap, curve_areas, curve_summary, select_circuit
from interpipe.circuits.scoring import Scorer
from interpipe.circuits.tables import NO_CIRCUIT, headline_rows
from interpipe.components import Component


@pytest.mark.parametrize("a, b, pool", [(88, 88, 270), (5, 12, 30), (3, 7, 10), (10, 10, 10), (1, 4, 9)])
def test_chance_overlap_matches_monte_carlo(a, b, pool):
    rng = np.random.default_rng(0)
    draws = 20000
    jaccard, containment = np.empty(draws), np.empty(draws)
    for i in range(draws):
        x = len(np.intersect1d(rng.choice(pool, a, replace=False), rng.choice(pool, b, replace=False)))
        jaccard[i], containment[i] = x / (a + b - x), x / a
    expected = chance_overlap(a, b, pool)
    for name, sample in (("jaccard", jaccard), ("containment", containment)):
        sem = sample.std() / math.sqrt(draws)
        assert expected[name] == pytest.approx(sample.mean(), abs=4 * sem + 1e-12), name


def test_chance_overlap_closed_forms():
    out = chance_overlap(88, 88, 270)  # the SmolLM2 IOI circuit's size among its 270 heads
    assert out["containment"] == pytest.approx(88 / 270)  # E|A∩B| / |A| = |B| / N exactly
    assert out["jaccard"] == pytest.approx(0.195, abs=5e-4)
    assert chance_overlap(10, 10, 10) == {"jaccard": 1.0, "containment": 1.0}  # both sets are the pool
    assert chance_overlap(0, 5, 10) == {"jaccard": 0.0, "containment": 0.0}
    with pytest.raises(ValueError, match="pool"):
        chance_overlap(11, 1, 10)


def test_cpr_and_cmd_of_hand_made_curves():
    # sizes 0, 1/4, 1/2, 1 of the pool, f = 0, .5, 1, 1: CPR = .25·.25 + .25·.75 + .5·1 = .75, CMD = 1 − CPR
    assert curve_areas([0, 1, 2, 4], [0.0, 0.5, 1.0, 1.0], 4) == pytest.approx((0.75, 0.25))
    # overshoot counts in CMD as |1 − f|: f = 0, 1.5, 1 at 0, 1/2, 1 -> CPR .375 + .625, CMD .375 + .125
    assert curve_areas([0, 1, 2], [0.0, 1.5, 1.0], 2) == pytest.approx((1.0, 0.5))
    assert curve_areas([2, 0, 1], [1.0, 0.0, 1.5], 2) == pytest.approx((1.0, 0.5))  # order of the sizes is free


def test_curve_summary_uses_mib_normalisation_with_intervals():
    full = np.array([2.0, 4.0])  # the model's logit differences on two prompts
    empty = np.array([1.0, 1.0])  # every head ablated: MIB's m(∅)
    ld = np.stack([empty, 1.0 + (full - 1.0) / 2, full, full])  # sizes 0, 1, 2, 4: f = 0, .5, 1, 1 on every prompt
    out = curve_summary([0, 1, 2, 4], ld, full, 4)
    assert out["cpr"].estimate == pytest.approx(0.75) and out["cmd"].estimate == pytest.approx(0.25)
    assert out["cpr"].low <= 0.75 <= out["cpr"].high and out["cpr"].n == 2
    with pytest.raises(ValueError, match="include 0"):
        curve_summary([1, 2, 4], ld[1:], full, 4)


class RampScorer(Scorer):
    """A selection half on which the top-k circuit keeps ``min(1, k / 39.5)`` of the logit difference of every prompt."""

    def __init__(self):
        self.clean_ld, self.corrupted_ld = np.array([1.0, 2.0, 3.0]), np.zeros(3)
        self.batch = SimpleNamespace(size=3)
        self.calls = 0

    def circuits(self, circuits):
        self.calls += 1
        return np.stack([self.clean_ld * min(1.0, len(c) / 39.5) for c in circuits]), None


@pytest.mark.parametrize("steps, k", [(0, 100), (4, 36), (10, 32)])
def test_refined_size_bisects_towards_the_smallest_passing_circuit(steps, k):
    ranking = [(Component.head(i // 10, i % 10), 1.0) for i in range(100)]
    scorer = RampScorer()  # passes the 0.8 target from k = 32 on; the grid 0, 1, 5, 22, 100 brackets it in (22, 100]
    # bisection: 61, 41 pass, 31 fails, 36, 33, 32 pass, then 31 and 32 are adjacent
    circuit = select_circuit(scorer, ranking, "faithfulness", target=0.8, points=5, refine_steps=steps)
    assert circuit.info["k"] == k and len(circuit.components) == k
    assert circuit.info["target_reached"] == int(k < 100)
    assert scorer.calls == 1 + min(steps, 6)  # one batched forward for the grid, one a bisection step
    assert circuit.info["curve_k"] == sorted(circuit.info["curve_k"])


METRICS = {"solved": 1, "logit_gap": 2.0, "logit_gap_ci_low": 1.5, "logit_gap_ci_high": 2.5, "cpr": 0.7,
           "cpr_ci_low": 0.6, "cpr_ci_high": 0.8, "cmd": 0.3, "cmd_ci_low": 0.2, "cmd_ci_high": 0.4,
           "faithfulness": 1.0, "faithfulness_ci_low": 0.9, "faithfulness_ci_high": 1.1, "random_faithfulness": 0.1,
           "circuit_size": 12.0, "pool_size": 20.0, "heldout_prompts": 8.0, "target_reached": 1,
           "heldout_above_target": 1}


def _metrics(rows):
    return {r["metric"]: r for r in rows}


def test_headline_reports_only_circuits_that_held():
    good = _metrics(headline_rows("m", "ioi", METRICS, "mean ablation of heads", 0.8))
    assert {"logit_gap", "cpr", "cmd", "faithfulness", "circuit_size"} <= set(good) and "circuit_found" not in good
    assert good["cpr"]["baseline_value"] == 1.0 and good["cmd"]["baseline_value"] == 0.0
    assert "mean ablation of heads" in good["cpr"]["note"]  # the ablation is stated beside CPR / CMD
    whole = _metrics(headline_rows("m", "co", {**METRICS, "target_reached": 0, "circuit_size": 20.0}, "", 0.8))
    assert "faithfulness" not in whole and "circuit_size" not in whole  # the whole model is not a circuit
    assert whole["circuit_found"]["value"] == 0.0 and whole["circuit_found"]["note"] == NO_CIRCUIT
    failed = _metrics(headline_rows("m", "ll", {**METRICS, "heldout_above_target": 0, "faithfulness_ci_low": 0.4}, "", 0.8))
    assert "faithfulness" not in failed and "held-out" in failed["circuit_found"]["note"]
    unsolved = _metrics(headline_rows("m", "sva", {**METRICS, "solved": 0}, "", 0.8))
    assert set(unsolved) == {"logit_gap"}
