"""The whole study on tiny models: the FP model against itself, and against a planted change.

Known answers: scored in its own model the FP circuit gives the circuits study's held-out
faithfulness, the clean logit difference is fully retained, the circuits overlap fully, effects and
token scores correlate perfectly. Against a copy with one head's output zeroed: that head's patching
effect is zero, the retained logit difference is the ratio of the two circuits runs' own held-out clean
logit differences, and the reversed token scores of the planted attribution results correlate at -1.
"""

from __future__ import annotations

import pandas as pd
import pytest

from interpipe.io import read_json
from tests.quant_interp.conftest import ZEROED


def _run(study_roots, data_root, out, quantized, effect_method="exact"):
    from interpipe.quant_interp import QuantInterpSettings, run_quant_interp

    settings = QuantInterpSettings(pairs=[{"fp": "tiny", "quantized": quantized}], random_circuits=3,
                                   circuits_root=str(study_roots / "circuits"), effect_method=effect_method,
                                   attribute_root=str(study_roots / "attribute"), bootstrap_resamples=200)
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


def test_outputs_follow_the_headline_contract(itself):
    from interpipe.headline import read_headline

    _, out = itself
    frame = read_headline(out / "headline.csv")
    assert {"fp_model", "setting"} <= set(frame.columns) and set(frame["model"]) == {"tiny"}
    assert {"clean_logit_diff_retained", "fp_circuit_faithfulness", "effect_correlation", "circuit_jaccard",
            "token_rank_correlation"} <= set(frame["metric"])
    for name in ("pairs.csv", "head_effects.csv", "head_classes.csv", "attribution_drift.csv",
                 "headline_retained_vs_overlap.png", "headline_attribution_drift.png"):
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
