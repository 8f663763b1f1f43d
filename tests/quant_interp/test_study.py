"""The whole study on tiny models: the FP model against itself, against a planted change, and against a
copy that fails the task.

The tiny random GPT-2 does not solve IOI, so the solved-pair runs plant the verdict
(``min_pairwise_accuracy=-1``: every pair solved), as the circuits tests plant ``min_logit_gap``.
Known answers: scored in its own model the FP circuit gives the circuits study's held-out
faithfulness, the clean logit difference is fully retained, the circuits overlap fully, effects and
token scores correlate perfectly. Against a copy with one head's output zeroed: that head's patching
effect is zero, the retained logit difference is the ratio of the two circuits runs' own held-out clean
logit differences, and the reversed token scores of the planted attribution results correlate at -1.
Against a copy with negated logits, at the default rule (above chance): its pairwise accuracy is one
minus the original's and its retained logit difference -1, so of the two pairs the one at or below
chance is unsolved, and its faithfulness, overlap, effect correlation and class survival are NaN with
their reason, never 0.0 or a ratio.
"""

from __future__ import annotations

import pandas as pd
import pytest

from interpipe.io import read_json
from tests.quant_interp.conftest import ZEROED


SOLVED_ANYWAY = -1.0  # min_pairwise_accuracy below any accuracy: the planted "every pair is solved"


def _run(study_roots, data_root, out, *quantized, effect_method="exact", min_pairwise_accuracy=SOLVED_ANYWAY):
    from interpipe.quant_interp import QuantInterpSettings, run_quant_interp

    settings = QuantInterpSettings(pairs=[{"fp": "tiny", "quantized": q} for q in quantized], random_circuits=3,
                                   circuits_root=str(study_roots / "circuits"), effect_method=effect_method,
                                   attribute_root=str(study_roots / "attribute"), bootstrap_resamples=200,
                                   attribution=False if "tiny-negated" in quantized else True,
                                   min_pairwise_accuracy=min_pairwise_accuracy, min_class_heads=2)
    return run_quant_interp(settings, out, study_roots / "models", data_root)


@pytest.fixture(scope="module")
def itself(study_roots, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("itself")
    return _run(study_roots, data_root, out, "tiny"), out


@pytest.fixture(scope="module")
def zeroed(study_roots, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("zeroed")
    return _run(study_roots, data_root, out, "tiny-zeroed"), out


def test_fp_against_itself_changes_nothing(itself, study_roots):
    metrics, _ = itself
    fp = read_json(study_roots / "circuits" / "tiny" / "tiny-ioi" / "metrics.json")
    for key in ("faithfulness", "faithfulness_per_prompt", "random_faithfulness", "circuit_accuracy"):
        for suffix in ("", "_ci_low", "_ci_high"):  # the circuits study's own held-out numbers, reproduced
            assert metrics[f"tiny/fp_circuit_{key}{suffix}"] == pytest.approx(fp[key + suffix], abs=1e-5), key + suffix
    # the FP side runs the plain HF model, the quantized side the bridge: equal to float precision
    for key, tol in (("clean_logit_diff_retained", 1e-4), ("effect_correlation", 1e-9),
                     ("saliency/token_rank_correlation", 1e-9)):
        for suffix in ("", "_ci_low", "_ci_high"):
            assert metrics[f"tiny/{key}{suffix}"] == pytest.approx(1.0, abs=tol), key + suffix
    assert metrics["tiny/circuit_jaccard"] == 1.0 and metrics["tiny/circuit_containment"] == 1.0
    assert metrics["tiny/saliency/comprehensiveness_change"] == 0.0
    assert metrics["tiny/quantized_solved"] == 1.0


def test_outputs_follow_the_headline_contract(itself):
    from interpipe.headline import read_headline

    _, out = itself
    frame = read_headline(out / "headline.csv")
    assert {"fp_model", "setting", "verdict", "reason"} <= set(frame.columns) and set(frame["model"]) == {"tiny"}
    assert set(frame["verdict"]) == {"solved"} and "quantized_pairwise_accuracy" in set(frame["metric"])
    assert {"clean_logit_diff_retained", "fp_circuit_faithfulness", "effect_correlation", "circuit_jaccard",
            "token_rank_correlation"} <= set(frame["metric"])
    for name in ("pairs.csv", "head_effects.csv", "head_classes.csv", "attribution_drift.csv",
                 "headline_solved_and_transfer.png", "headline_attribution_drift.png"):
        assert (out / name).exists(), name


def test_planted_change_moves_what_it_should(zeroed, study_roots):
    metrics, out = zeroed
    layer, head = ZEROED
    effects = pd.read_csv(out / "head_effects.csv").set_index(["layer", "head"])
    assert effects.loc[(layer, head), "effect_quantized"] == pytest.approx(0.0, abs=1e-4)  # it writes nothing now (float noise of a batched run)
    assert abs(effects.loc[(layer, head), "effect_fp"]) > 1e-2  # ... and it did in the FP model
    assert metrics["tiny-zeroed/effect_correlation"] < 1.0 - 1e-6
    fp = read_json(study_roots / "circuits" / "tiny" / "tiny-ioi" / "metrics.json")
    q = read_json(study_roots / "circuits" / "tiny-zeroed" / "tiny-zeroed-ioi" / "metrics.json")
    retained = q["heldout_logit_diff"] / fp["heldout_logit_diff"]  # the circuits runs' own held-out means
    assert metrics["tiny-zeroed/clean_logit_diff_retained"] == pytest.approx(retained, rel=1e-5)
    assert metrics["tiny-zeroed/saliency/token_rank_correlation"] == pytest.approx(-1.0)
    assert metrics["tiny-zeroed/saliency/comprehensiveness_change"] == pytest.approx(0.1)
    fp_heads = set(read_json(study_roots / "circuits" / "tiny" / "tiny-ioi" / "circuit.json")["heads"])
    q_heads = set(read_json(study_roots / "circuits" / "tiny-zeroed" / "tiny-zeroed-ioi" / "circuit.json")["heads"])
    assert metrics["tiny-zeroed/circuit_jaccard"] == pytest.approx(len(fp_heads & q_heads) / len(fp_heads | q_heads))


@pytest.fixture(scope="module")
def negated(study_roots, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("negated")
    return _run(study_roots, data_root, out, "tiny", "tiny-negated", min_pairwise_accuracy=0.5), out


def test_a_pair_at_or_below_chance_is_unsolved_and_its_mechanism_undefined(negated):
    import math

    from interpipe.headline import read_headline

    metrics, out = negated
    accuracy = {m: metrics[f"{m}/quantized_pairwise_accuracy"] for m in ("tiny", "tiny-negated")}
    assert sum(accuracy.values()) == pytest.approx(1.0)  # every logit difference changes sign
    assert metrics["tiny-negated/clean_logit_diff_retained"] == pytest.approx(-1.0, abs=1e-4)
    failing = min(accuracy, key=accuracy.get)  # at or below 0.5, so its interval cannot lie above chance
    assert metrics[f"{failing}/quantized_solved"] == 0.0
    for key in ("fp_circuit_faithfulness", "fp_circuit_random_faithfulness", "circuit_jaccard",
                "circuit_containment", "effect_correlation"):
        assert f"{failing}/{key}" not in metrics, key  # undefined: left out, never 0.0
    rows = read_headline(out / "headline.csv").set_index(["model", "metric"]).loc[failing]
    assert set(rows["verdict"]) == {"unsolved"}
    undefined = ["fp_circuit_faithfulness", "circuit_jaccard", "circuit_containment", "effect_correlation",
                 *[m for m in rows.index if m.endswith("_survival")]]
    for metric in undefined:
        assert math.isnan(rows.loc[metric, "value"]), metric
        assert rows.loc[metric, "reason"].startswith("unsolved: the quantized model's pairwise IOI accuracy"), metric
    assert rows.loc["quantized_pairwise_accuracy", "value"] == pytest.approx(accuracy[failing])
    pairs = pd.read_csv(out / "pairs.csv").set_index("model")
    assert pairs.loc[failing, "verdict"] == "unsolved" and "fp_circuit_faithfulness: unsolved" in pairs.loc[failing, "undefined"]
