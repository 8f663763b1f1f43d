"""One finding per study and model: the headline number, its interval, its floor or baseline, a verdict.

A finding answers "what did this study show on this model?" in one line. It reads the study's own
``headline.csv`` rows (:mod:`interpipe.headline`) and judges them by one rule per stage, so that a
reader does not have to compute the verdict from a wide table:

- **shows the effect**: the interval lies clear of the floor or baseline, in the direction the study
  tests;
- **valid negative**: the study could tell (its floor and ceiling separate, the model solves the task)
  and the method does not beat the floor;
- **uninformative**: the study cannot tell here (the floor and the oracle score alike, the model does
  not solve the task, one calibration seed gives no interval, the edited model is broken), with the
  reason.

A stage whose headline rows carry ``verdict`` and ``reason`` columns of these three words (or
``solved`` / ``unsolved``) is judged by them. The findings are written to ``findings.csv`` beside
the report page, open its first screen and make the terminal summary.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from interpipe.headline import format_number, format_value

FILE = "findings.csv"
SHOWS, NEGATIVE, UNINFORMATIVE = "shows the effect", "valid negative", "uninformative"
VERDICTS = (SHOWS, NEGATIVE, UNINFORMATIVE)
# Models a quantize stage exported (`<model>-<method>-w<bits>a<bits>`): their studies are read as pairs
# by quant_interp, so they make no finding of their own.
QUANTIZED_EXPORT = re.compile(r"-(rtn|smoothquant|osplus|gptq|llmint8|quarot)-w\d+a\d+$")
# The quantization setting a finding quotes when RTN degrades there: SmoothQuant's and OS+'s main setting.
PRIMARY_BITS = "w8a8"


@dataclass
class Finding:
    """One study's result on one model, judged."""

    study: str
    stage: str
    model: str
    task: str
    claim: str  # what the number measures, in words
    metric: str
    value: float
    ci_low: float
    ci_high: float
    baseline: str  # the floor or baseline it is compared with
    baseline_value: float
    verdict: str  # one of VERDICTS
    reason: str
    figure: str = ""  # the report's copy of the stage's key figure, relative to the report folder

    @property
    def value_text(self) -> str:
        return format_value(self.value, self.ci_low, self.ci_high)

    @property
    def baseline_text(self) -> str:
        number = format_number(self.baseline_value)
        return f"{self.baseline}: {number}" if number else self.baseline


def _num(row: Any, column: str) -> float:
    try:
        value = float(row[column])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return value


def _pick(frame: Any, **where: str) -> Any:
    """The last headline row matching every ``column=value`` (None if there is none)."""
    hit = frame
    for column, value in where.items():
        if column not in hit:
            return None
        hit = hit[hit[column].astype(str) == value]
    return hit.iloc[-1] if len(hit) else None


def _finding(row: Any, claim: str, verdict: str, reason: str, **override: Any) -> Finding:
    fields = {"study": "", "stage": str(row.get("stage", "")), "model": str(row["model"]), "task": str(row["task"]),
              "claim": claim, "metric": str(row["metric"]), "value": _num(row, "value"),
              "ci_low": _num(row, "ci_low"), "ci_high": _num(row, "ci_high"),
              "baseline": str(row.get("baseline", "") or ""), "baseline_value": _num(row, "baseline_value"),
              "verdict": verdict, "reason": reason}
    fields.update(override)
    return Finding(**fields)


def _interval(row: Any) -> str:
    return format_value(_num(row, "value"), _num(row, "ci_low"), _num(row, "ci_high"))


def judge_attribution(frame: Any) -> Finding | None:
    """NormXLogit's comprehensiveness between the random floor (0) and the oracle (1), over all tasks."""
    if (frame["task"] == "all").any():
        frame = frame[frame["task"] == "all"]
    normalised = frame[frame["metric"] == "normalised_comprehensiveness_k"]
    if not len(normalised):
        return None
    methods = [m for m in normalised["method"] if m not in ("random", "oracle")]
    method = "normxlogit" if "normxlogit" in methods else (methods[0] if methods else None)
    if method is None:
        return None
    row = _pick(normalised, method=method)
    claim = f"{method}: comprehensiveness, normalised (random floor 0, oracle 1)"
    row = {**row.to_dict(), "baseline": "random floor (oracle 1)"}
    oracle = _pick(frame, method="oracle", metric="informative")
    if oracle is not None and _num(oracle, "value") < 1:
        return _finding(row, claim, UNINFORMATIVE, "the oracle's comprehensiveness does not separate from the "
                        "random floor's: the metric cannot tell a method that knows the answer from chance")
    if _num(row, "ci_low") > 0:
        return _finding(row, claim, SHOWS, "its interval lies above the random floor")
    return _finding(row, claim, NEGATIVE, "its interval reaches the random floor (0), while the oracle is "
                    "clear of it")


def judge_circuits(frame: Any) -> Finding | None:
    """The selected circuit's held-out faithfulness against a random circuit of the same size."""
    tasks = list(dict.fromkeys(frame["task"]))
    task = "ioi" if "ioi" in tasks else tasks[0]
    part = frame[frame["task"] == task]
    gap = _pick(part, method="model", metric="logit_gap")
    if gap is None:
        return None
    claim = f"{task}: faithfulness of the selected circuit on held-out prompts (full model 1)"
    if _num(gap, "ci_low") <= 0 or str(gap.get("solved", "1")) in ("0", "0.0", "False"):
        return _finding(gap, f"{task}: the model's logit gap (clean − corrupted)", UNINFORMATIVE,
                        f"the model does not solve the task: logit gap {_interval(gap)} reaches 0, so there is "
                        "no behaviour for a circuit to explain")
    found = _pick(part, method="circuit", metric="circuit_found")
    faithfulness = _pick(part, method="circuit", metric="faithfulness")
    if faithfulness is None or (found is not None and _num(found, "value") < 1):
        note = str(found.get("note", "")) if found is not None else ""
        return _finding(found if found is not None else gap, f"{task}: a circuit below the whole model", NEGATIVE,
                        note or "no circuit below the whole model passed its held-out check")
    excess = _pick(part, method="circuit", metric="excess_over_random")
    if excess is not None and _num(excess, "ci_low") > 0:
        return _finding(faithfulness, claim, SHOWS, f"above random circuits of the same size by {_interval(excess)}")
    return _finding(faithfulness, claim, NEGATIVE, "not distinguishable from random circuits of the same size")


def judge_edges(frame: Any) -> Finding | None:
    """The EAP-IG edge circuits' CPR (MIB's area under the faithfulness curve over edge budgets) against
    random edge sets of the same sizes, on the task edges were scored for (IOI first)."""
    edges = frame[frame["method"].astype(str).str.startswith("edge_")]
    if not len(edges):
        return None
    tasks = list(dict.fromkeys(edges["task"]))
    task = "ioi" if "ioi" in tasks else tasks[0]
    part = edges[edges["task"] == task]
    method = next((m for m in ("edge_eap_ig_inputs", "edge_eap_ig_activations", "edge_eap") if (part["method"] == m).any()),
                  None)
    row = _pick(part, method=method, metric="cpr") if method else None
    floor = _pick(part, method="edge_random", metric="cpr")
    if row is None or floor is None:
        return None
    name = method.removeprefix("edge_").replace("_", "-")
    claim = f"{task}: CPR of {name} edge circuits over MIB's edge budgets (random edges the floor, the model 1)"
    override = {"baseline": "random edges, same sizes", "baseline_value": _num(floor, "value")}
    if _num(row, "ci_low") > _num(floor, "ci_high"):
        return _finding(row, claim, SHOWS, f"above random edge sets, whose CPR is {_interval(floor)}", **override)
    return _finding(row, claim, NEGATIVE, f"not above random edge sets ({_interval(floor)})", **override)


def judge_talking_heads(frame: Any) -> Finding | None:
    """The weight edit's accuracy gain on the failing lengths against editing a random component."""
    row = _pick(frame, method="weight_edit", metric="gain_failing")
    if row is None:
        return None
    claim = "Laundry List: accuracy gain of the weight edit on the failing lengths (held out)"
    unedited = _pick(frame, method="weight_edit", metric="accuracy_failing")
    if unedited is not None and _num(unedited, "baseline_value") >= 0.95:
        return _finding(row, claim, UNINFORMATIVE, "the unedited model already solves the failing lengths: "
                        "no room for a gain")
    floor = max(0.0, _num(row, "baseline_value")) if _num(row, "baseline_value") == _num(row, "baseline_value") else 0.0
    if _num(row, "ci_low") > floor:
        return _finding(row, claim, SHOWS, "its interval lies above 0 and above the random-component edit")
    return _finding(row, claim, NEGATIVE, "its interval reaches 0 or the random-component edit")


def _judge_one_row(frame: Any, metric: str, claim: str, clear: Callable[[Any], bool], shows: str,
                   otherwise: tuple[str, str]) -> Finding | None:
    """A study read off one headline row: SHOWS when ``clear(row)``, else ``otherwise`` (verdict, reason)."""
    row = _pick(frame, metric=metric)
    if row is None:
        return None
    return _finding(row, claim, SHOWS, shows) if clear(row) else _finding(row, claim, *otherwise)


def judge_bigram(frame: Any) -> Finding | None:
    """The bigram subnetwork's surprisal correlation against a random subnetwork of the same size."""
    return _judge_one_row(frame, "surprisal_corr", "correlation of the subnetwork's surprisal with the bigram model's",
                          lambda row: _num(row, "ci_low") > _num(row, "baseline_value"),
                          "its interval lies above the random subnetwork's",
                          (NEGATIVE, "not above the random subnetwork of the same size"))


def judge_lnfree(frame: Any) -> Finding | None:
    """The LN-free model's held-out CE against the LN-kept control, judged by the study's own rule (its
    ``recovered`` row, the verdict sentence in its note): not recovered makes the study uninformative,
    since an LN-free model that computes nothing has exact DLA by construction."""
    recovered = _pick(frame, metric="recovered")
    if recovered is None:
        return None
    sentence = str(recovered.get("note", "") or "")
    for metric, claim in (("ce_delta_vs_control", "CE of the LN-free model minus the LN-kept control (held-out, nats)"),
                          ("ce_frozen_no_finetune", "CE with every norm frozen, before fine-tuning (held-out, nats)"),
                          ("recovered", "the LN-free model recovered (1) or not (0)")):
        row = _pick(frame, metric=metric)
        if row is not None:
            break
    if _num(recovered, "value") >= 1:
        return _finding(row, claim, SHOWS, sentence or "recovered: normalisation removed at little cost, its DLA exact")
    return _finding(row, claim, UNINFORMATIVE, sentence or "not recovered: the LN-free model's DLA describes a broken model")


def _bits_order(bits: str) -> tuple[int, int]:
    found = re.match(r"w(\d+)a(\d+)", str(bits))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def judge_quantize(frame: Any) -> Finding | None:
    """The best outlier-aware method against RTN at W8A8 (the papers' main setting), else at the mildest
    setting where RTN loses something (its interval above 0): where RTN loses nothing there is nothing
    for a method to recover. The setting is chosen by RTN alone, never by the method's result."""
    metric = next((m for m in ("loss_delta", "margin_drop") if (frame["metric"] == m).any()), None)
    if metric is None or "quant_method" not in frame:
        return None
    rows = frame[frame["metric"] == metric]
    rtn = rows[rows["quant_method"] == "rtn"]
    degraded = [r for _, r in rtn.iterrows() if _num(r, "ci_low") > 0]
    if not degraded:
        if not len(rtn):
            return None
        row = rtn.iloc[0]
        no_interval = all(math.isnan(_num(r, "ci_low")) for _, r in rtn.iterrows())
        return _finding(row, f"{metric} of RTN (full precision 0)", UNINFORMATIVE,
                        "one calibration seed: no interval" if no_interval else
                        "RTN loses nothing measurable at any setting: no room for a method to do better")
    degraded_bits = [str(r["bits"]) for r in degraded]
    bits = PRIMARY_BITS if PRIMARY_BITS in degraded_bits else max(degraded_bits, key=_bits_order)
    others = rows[(rows["bits"].astype(str) == bits) & (rows["quant_method"] != "rtn")]
    rtn_row = next(r for r in degraded if str(r["bits"]) == bits)
    if not len(others):
        return _finding(rtn_row, f"{bits}: {metric} of RTN (full precision 0)", UNINFORMATIVE,
                        "no other method ran at this setting")
    best = others.loc[others["value"].astype(float).idxmin()]
    claim = f"{bits}: {metric} of {best['quant_method']} (RTN the floor, full precision 0)"
    override = {"baseline": "RTN", "baseline_value": _num(rtn_row, "value")}
    low, high = _num(best, "minus_baseline_ci_low"), _num(best, "minus_baseline_ci_high")
    diff = format_value(_num(best, "minus_baseline"), low, high)
    if math.isnan(low):
        return _finding(best, claim, UNINFORMATIVE, "one calibration seed: no interval on the difference to RTN",
                        **override)
    if high < 0:
        return _finding(best, claim, SHOWS, f"below RTN by {diff} (difference)", **override)
    return _finding(best, claim, NEGATIVE, f"not below RTN: difference {diff}", **override)


def judge_quant_interp(frame: Any) -> list[Finding]:
    """Per FP/quantized pair: does the FP circuit still carry the task inside the quantized model?"""
    found = []
    for model, part in frame.groupby("model", sort=False):
        row = _pick(part, metric="fp_circuit_faithfulness")
        if row is None:
            continue
        claim = f"{part['fp_model'].iloc[0] if 'fp_model' in part else ''} → {model}: the FP circuit's " \
                "faithfulness inside the quantized model"
        verdict = str(row.get("verdict", ""))
        if verdict == "unsolved":
            found.append(_finding(row, claim, UNINFORMATIVE, str(row.get("reason", "")) or
                                  "the quantized model does not solve the task"))
            continue
        excess = _pick(part, metric="fp_circuit_excess_over_random")
        if excess is not None and _num(excess, "ci_low") > 0:
            found.append(_finding(row, claim, SHOWS, f"the circuit survives: above random circuits by {_interval(excess)}"))
        else:
            found.append(_finding(row, claim, NEGATIVE, "the FP circuit is not above random circuits in the "
                                  "quantized model"))
    return found


JUDGES: dict[str, tuple[Callable[[Any], Any], ...]] = {  # stage -> its judges, one finding each
    "attribute": (judge_attribution,), "circuits": (judge_circuits, judge_edges),
    "talking_heads": (judge_talking_heads,), "bigram": (judge_bigram,), "lnfree": (judge_lnfree,),
    "quantize": (judge_quantize,),
}


def _own_verdict(frame: Any) -> Finding | None:
    """A stage that judged itself: its first row whose ``verdict`` is one of the three words."""
    if "verdict" not in frame:
        return None
    own = frame[frame["verdict"].astype(str).isin(VERDICTS)]
    if not len(own):
        return None
    row = own.iloc[0]
    claim = str(row.get("claim", "") or f"{row['method']}: {row['metric']}")
    return _finding(row, claim, str(row["verdict"]), str(row.get("reason", "") or ""))


def stage_findings(stage: str, frame: Any) -> list[Finding]:
    """The findings of one stage's headline rows (every model but the quantized exports)."""
    if stage == "quant_interp":
        return judge_quant_interp(frame)
    found = []
    for model, part in frame.groupby("model", sort=False):
        if QUANTIZED_EXPORT.search(str(model)):
            continue
        own = _own_verdict(part)
        judged = [own] if own else [judge(part) for judge in JUDGES.get(stage, ())]
        found += [f for f in judged if f is not None]
    return found


def collect_findings(headlines: dict[str, Any], figures: dict[str, list[dict]] | None = None,
                     stage_order: list[str] | tuple[str, ...] = ()) -> list[Finding]:
    """Every study's findings (``headlines``: study -> headline rows with a ``stage`` column), stages in
    ``stage_order`` first; ``figures`` (the report's, per study) gives each finding its key figure's link."""
    figures = figures or {}
    out = []
    for study, frame in headlines.items():
        for stage, part in frame.groupby("stage", sort=False):
            for finding in stage_findings(str(stage), part):
                finding.study = study
                finding.figure = _figure_of(figures.get(study, []), study, str(stage), finding.model)
                out.append(finding)
    rank = {stage: i for i, stage in enumerate(stage_order)}
    return sorted(out, key=lambda f: (rank.get(f.stage, len(rank)), f.stage))


def _figure_of(figures: list[dict], study: str, stage: str, model: str) -> str:
    """The report's copy of the stage's first headline figure for ``model`` (``figures/<study>/<file>``)."""
    for figure in figures:
        if figure.get("headline") and f"/{stage}/{model}/" in "/" + figure["caption"]:
            return f"figures/{study}/{figure['file']}"
    return ""


def findings_frame(findings: list[Finding]) -> Any:
    """The findings as a table (``findings.csv``): one row each, value and baseline as text too."""
    import pandas as pd

    columns = list(Finding.__dataclass_fields__)
    rows = [{**asdict(f), "value_text": f.value_text, "baseline_text": f.baseline_text} for f in findings]
    return pd.DataFrame(rows, columns=columns + ["value_text", "baseline_text"])
