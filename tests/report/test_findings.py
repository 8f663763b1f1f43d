"""Each study's verdict rule on hand-made headline rows whose verdict is known: the effect, a valid
negative, and every reason a study is uninformative."""

from __future__ import annotations

import pandas as pd
import pytest

from interpipe.report.findings import NEGATIVE, SHOWS, UNINFORMATIVE, collect_findings, stage_findings

COLUMNS = ["model", "task", "method", "metric", "value", "ci_low", "ci_high", "baseline", "baseline_value"]


def frame(rows: list[tuple], **extra: list) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=COLUMNS)
    for column, values in extra.items():
        out[column] = values
    return out


def attribution(informative: float, low: float, high: float) -> pd.DataFrame:
    return frame([
        ("m", "all", "oracle", "informative", informative, None, None, "", None),
        ("m", "all", "normxlogit", "normalised_comprehensiveness_k", (low + high) / 2, low, high, "random floor", 0.0),
        ("m", "ioi", "normxlogit", "normalised_comprehensiveness_k", 0.9, 0.8, 1.0, "random floor", 0.0),  # a task: not read
        ("m", "all", "random", "normalised_comprehensiveness_k", 0.0, -0.1, 0.1, "random floor", 0.0),
    ])


@pytest.mark.parametrize("informative, low, high, verdict", [
    (1.0, 0.1, 0.5, SHOWS), (1.0, -0.1, 0.5, NEGATIVE), (0.0, 0.1, 0.5, UNINFORMATIVE)])
def test_attribution(informative, low, high, verdict):
    [finding] = stage_findings("attribute", attribution(informative, low, high))
    assert finding.verdict == verdict and finding.task == "all"
    assert finding.value_text == f"{(low + high) / 2:.3g} [{low:.3g}, {high:.3g}]"


def circuits(gap_low: float, found: float, excess_low: float) -> pd.DataFrame:
    return frame([
        ("m", "ioi", "model", "logit_gap", 3.0, gap_low, 4.0, "corrupted run", 0.0),
        ("m", "ioi", "circuit", "faithfulness", 0.9, 0.8, 1.0, "random circuit, same size", 0.1),
        ("m", "ioi", "circuit", "excess_over_random", 0.8, excess_low, 0.9, "random circuit, same size", 0.0),
        ("m", "ioi", "circuit", "circuit_found", found, None, None, "", None),
    ], note=["", "", "", "failed its held-out check" if not found else ""])


def test_circuits_verdicts():
    assert stage_findings("circuits", circuits(1.0, 1, 0.5))[0].verdict == SHOWS
    assert stage_findings("circuits", circuits(1.0, 1, -0.1))[0].verdict == NEGATIVE
    missed = stage_findings("circuits", circuits(1.0, 0, 0.5))[0]
    assert missed.verdict == NEGATIVE and missed.reason == "failed its held-out check"
    unsolved = stage_findings("circuits", circuits(-0.5, 1, 0.5))[0]  # the gap reaches 0: nothing to explain
    assert unsolved.verdict == UNINFORMATIVE and unsolved.metric == "logit_gap"


def test_edge_circuits_against_random_edges():
    rows = circuits(1.0, 1, 0.5)
    edges = frame([("m", "ioi", "edge_eap_ig_inputs", "cpr", 0.95, 0.9, 1.0, "random edges", 0.3),
                   ("m", "ioi", "edge_random", "cpr", 0.3, 0.25, 0.35, "", None)])
    node, edge = stage_findings("circuits", pd.concat([rows, edges], ignore_index=True))
    assert node.metric == "faithfulness" and edge.metric == "cpr" and edge.verdict == SHOWS
    assert edge.baseline_value == 0.3 and "eap-ig-inputs" in edge.claim
    edges.loc[0, "ci_low"] = 0.3  # reaches the random sets' interval
    assert stage_findings("circuits", pd.concat([rows, edges], ignore_index=True))[1].verdict == NEGATIVE


def quantize(osplus_diff: tuple[float, float, float], rtn_w8_low: float = 0.5) -> pd.DataFrame:
    rows = []
    for bits, rtn, rtn_low in (("w16a8", 0.4, 0.2), ("w8a8", 0.8, rtn_w8_low), ("w4a4", 9.0, 8.0)):
        rows.append(("m", "corpus", f"rtn-{bits}", "loss_delta", rtn, rtn_low, rtn + 0.3, "fp", 0.0, "rtn", bits,
                     rtn, rtn_low, rtn + 0.3))
        diff, low, high = osplus_diff if bits == "w8a8" else (-5.0, -6.0, -4.0)  # elsewhere: a clear win
        rows.append(("m", "corpus", f"osplus-{bits}", "loss_delta", rtn + diff, rtn + low, rtn + high, "rtn", rtn,
                     "osplus", bits, diff, low, high))
    return pd.DataFrame(rows, columns=COLUMNS + ["quant_method", "bits", "minus_baseline", "minus_baseline_ci_low",
                                                 "minus_baseline_ci_high"])


def test_quantize_reads_w8a8_whatever_the_other_settings_show():
    win = stage_findings("quantize", quantize((-0.4, -0.6, -0.2)))[0]
    assert win.verdict == SHOWS and win.claim.startswith("w8a8") and win.baseline == "RTN" and win.baseline_value == 0.8
    tie = stage_findings("quantize", quantize((-0.1, -0.5, 0.3)))[0]
    assert tie.verdict == NEGATIVE and tie.claim.startswith("w8a8")  # not the clear win at w16a8 or w4a4
    # where RTN loses nothing at W8A8, the mildest setting where it does is read instead
    assert stage_findings("quantize", quantize((-0.1, -0.5, 0.3), rtn_w8_low=-0.1))[0].claim.startswith("w16a8")


def test_quantize_without_room_or_interval_is_uninformative():
    flat = quantize((0.0, -0.1, 0.1))
    flat["ci_low"] = -0.01  # RTN's loss is within noise everywhere
    assert stage_findings("quantize", flat)[0].verdict == UNINFORMATIVE
    one_seed = quantize((0.0, -0.1, 0.1))
    one_seed[["ci_low", "ci_high"]] = float("nan")
    assert "one calibration seed" in stage_findings("quantize", one_seed)[0].reason


def test_lnfree_reads_the_studys_own_recovered_rule():
    ok = frame([("m", "corpus", "lnfree", "recovered", 1.0, None, None, "LN-kept control", 1.0),
                ("m", "corpus", "lnfree", "ce_delta_vs_control", 0.05, 0.0, 0.1, "no change", 0.0)],
               note=["recovered: within 0.3 nats", "paired"])
    finding = stage_findings("lnfree", ok)[0]
    assert finding.verdict == SHOWS and finding.metric == "ce_delta_vs_control" and finding.reason.startswith("recovered")
    diverged = frame([("m", "corpus", "lnfree", "recovered", 0.0, None, None, "LN-kept control", 1.0),
                      ("m", "corpus", "lnfree", "ce_frozen_no_finetune", 9.0, 8.9, 9.1, "original", 5.2)],
                     note=["not recovered: the removal diverged at step 1", ""])
    finding = stage_findings("lnfree", diverged)[0]
    assert finding.verdict == UNINFORMATIVE and finding.metric == "ce_frozen_no_finetune"
    assert finding.reason == "not recovered: the removal diverged at step 1"


def test_talking_heads_and_bigram():
    gain = frame([("m", "laundry_list", "weight_edit", "accuracy_failing", 0.3, 0.2, 0.4, "unedited model", 0.2),
                  ("m", "laundry_list", "weight_edit", "gain_failing", 0.1, 0.05, 0.15, "random component", 0.0)])
    assert stage_findings("talking_heads", gain)[0].verdict == SHOWS
    gain.loc[1, "ci_low"] = -0.05
    assert stage_findings("talking_heads", gain)[0].verdict == NEGATIVE
    gain.loc[0, "baseline_value"] = 1.0  # the unedited model already solves the failing lengths
    assert stage_findings("talking_heads", gain)[0].verdict == UNINFORMATIVE
    corr = frame([("m", "corpus", "bigram", "surprisal_corr", 0.9, 0.85, 0.95, "random subnetwork", 0.9)])
    assert stage_findings("bigram", corr)[0].verdict == NEGATIVE  # clear of 0 but not of the random subnetwork


def test_quant_interp_unsolved_pairs_are_uninformative_with_the_reason():
    rows = frame([("q1", "ioi", "circuit", "fp_circuit_faithfulness", 1.2, 1.0, 1.4, "random circuit", 0.0),
                  ("q1", "ioi", "circuit", "fp_circuit_excess_over_random", 1.1, 0.9, 1.3, "random circuit", 0.0),
                  ("q2", "ioi", "circuit", "fp_circuit_faithfulness", None, None, None, "random circuit", 0.0)],
                 fp_model=["fp", "fp", "fp"], verdict=["solved", "solved", "unsolved"],
                 reason=["", "", "pairwise accuracy reaches chance"])
    found = {f.model: f for f in stage_findings("quant_interp", rows)}
    assert found["q1"].verdict == SHOWS
    assert found["q2"].verdict == UNINFORMATIVE and found["q2"].reason == "pairwise accuracy reaches chance"


def test_a_stage_that_judges_itself_and_the_quantized_exports_are_left_to_quant_interp():
    own = frame([("m", "corpus", "x", "score", 0.5, 0.4, 0.6, "floor", 0.1),
                 ("m-rtn-w8a8", "corpus", "x", "score", 0.5, 0.4, 0.6, "floor", 0.1)],
                verdict=[UNINFORMATIVE, UNINFORMATIVE], reason=["too few steps", ""])
    [finding] = stage_findings("newstudy", own)
    assert finding.model == "m" and finding.reason == "too few steps"


def test_findings_follow_the_stage_order_and_link_their_figure():
    headlines = {"attribution": attribution(1.0, 0.1, 0.5).assign(stage="attribute"),
                 "circuits": circuits(1.0, 1, 0.5).assign(stage="circuits")}
    figures = {"circuits": [{"caption": "outputs/circuits/m/headline_curve.png", "file": "c.png", "headline": True}]}
    found = collect_findings(headlines, figures, stage_order=["circuits", "attribute"])
    assert [(f.study, f.stage) for f in found] == [("circuits", "circuits"), ("attribution", "attribute")]
    assert found[0].figure == "figures/circuits/c.png" and found[1].figure == ""
