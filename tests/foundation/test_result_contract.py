"""Every study's result keeps the one contract of :mod:`interpipe.result`.

For each result class, a small hand-built instance: it is a ``Result``; ``save`` then ``load`` gives
back its values and its ``info``; a second ``save`` into the same folder raises ``OutputExistsError``
and leaves every byte under the folder's parent as it was; ``overwrite=True`` replaces the result.
Each instance is built from a number ``v`` that the second instance changes, so a save that does not
replace (or a load that reads something else) fails the comparison.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal

from interpipe.attribution.result import Attribution
from interpipe.circuits.edges.results import EdgeCurves
from interpipe.circuits.results import CircuitResult
from interpipe.io import OutputExistsError
from interpipe.quant.results import QuantStudyResult, SettingResult
from interpipe.quant_interp.inputs import Pair
from interpipe.quant_interp.study import PairResult
from interpipe.result import Result, writing
from interpipe.stats import Interval
from interpipe.weights.bigram_subnetwork import BigramResult
from interpipe.weights.lnfree import LNFreeResult
from interpipe.weights.result import StudyResult
from interpipe.weights.talking_heads import TalkingHeadsResult

INFO = {"stage": "test", "study": "contract", "model": {"name": "toy", "source": "toy"}, "seed": 3,
        "config_hash": "abc123def456", "git_revision": "0" * 40}


def _info(v: float) -> dict:
    return {**INFO, "value": v}


# --- hand-built instances, one per class ----------------------------------------------------------

def _attribution(v: float) -> Attribution:
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([[v, -0.5, 0.25], [1.5, v / 2, 0.0]])  # (batch, pos); padding holds 0
    layers = torch.stack([scores, 2 * scores])  # (layer, batch, pos)
    return Attribution("saliency", scores, torch.tensor([[5, 6, 7], [8, 9, 0]]), mask, torch.tensor([3, 4]),
                       ["ex0", "ex1"], [["a", "b", "c"], ["d", "e", ""]], layer_scores=layers, seconds=v,
                       info=_info(v), diagnostics={"relative_gap": [v, 0.5]})


def _same_attribution(a: Attribution, b: Attribution) -> None:
    assert a.method == b.method and a.example_ids == b.example_ids and a.seconds == b.seconds
    assert a.tokens == [t[:n] for t, n in zip(b.tokens, b.attention_mask.sum(1).tolist())]
    for name in ("scores", "input_ids", "attention_mask", "target_ids", "layer_scores"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.diagnostics == b.diagnostics and a.info == b.info


def _circuit(v: float) -> CircuitResult:
    return CircuitResult("z_head", torch.tensor([[v, 0.5, -1.0], [0.0, 2.0, v / 4]]), ("layer", "head"),
                         {"head": ["H0", "H1", "H2"]}, baseline=v / 10, info={**_info(v), "method": "exact"})


def _same_circuit(a: CircuitResult, b: CircuitResult) -> None:
    assert torch.equal(a.values, b.values) and a.axes == b.axes and a.labels == b.labels
    assert a.baseline == b.baseline and a.info == b.info
    assert_frame_equal(a.to_frame(), b.to_frame())


def _study(cls: type) -> Callable[[float], StudyResult]:
    def build(v: float) -> StudyResult:
        tables = {"scores": pd.DataFrame({"layer": [0, 1], "head": [1, 0], "score": [v, 0.125]}),
                  "curve": pd.DataFrame({"step": [0, 10], "loss": [3.5, v]})}
        return cls({"accuracy": v, "n": 2}, tables, {"mask": torch.tensor([[v, 1.0], [0.0, 0.5]])}, _info(v))
    return build


def _same_study(a: StudyResult, b: StudyResult) -> None:
    assert type(a) is type(b) and a.metrics == b.metrics and a.info == b.info
    assert list(a.tables) == sorted(b.tables)  # result.json lists the tables sorted
    for name, frame in b.tables.items():
        assert_frame_equal(a.tables[name], frame)
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def _setting(v: float, method: str = "smoothquant") -> SettingResult:
    name = f"toy-{method}-w8a8-paper"
    layers = pd.DataFrame({"module": ["h.0.attn", "h.0.mlp"], "sqnr_db": [v, 30.5], "mse": [0.001, v / 100]})
    migration = (pd.DataFrame({"pair": ["ln_1->attn"], "alpha": [0.5], "scale_max": [v]}) if method != "rtn"
                 else pd.DataFrame())
    seeds = pd.DataFrame({"calib_seed": [0, 1], "loss_delta": [v, v + 0.5]})
    metrics = {"n_seeds": 2, "loss_delta": v + 0.25, "loss_delta_ci_low": v, "loss_delta_ci_high": v + 0.5,
               "fp_loss": 2.0}
    info = {**_info(v), "model": "toy", "kind": "causal_lm", "name": name, "method": method, "bits": "w8a8",
            "granularity": "paper"}
    return SettingResult(name, method, "w8a8", "paper", metrics, layers, migration, seeds, info)


def _same_setting(a: SettingResult, b: SettingResult) -> None:
    assert (a.name, a.method, a.bits, a.granularity) == (b.name, b.method, b.bits, b.granularity)
    assert a.metrics == b.metrics and a.info == b.info
    for name in ("layers", "seeds"):
        assert_frame_equal(getattr(a, name), getattr(b, name))
    if len(b.migration):
        assert_frame_equal(a.migration, b.migration)
    else:
        assert len(a.migration) == 0  # an empty migration table is not written


def _quant_study(v: float) -> QuantStudyResult:
    settings = [_setting(v, "rtn"), _setting(v + 1.0)]
    outliers = pd.DataFrame({"hook": ["h.0.ln_1"], "outlier_ratio": [v + 5.0], "top_channels": ["7"],
                             "top_absmax": ["12.5"], "top_min": ["-3"], "top_max": ["12.5"]})
    channels = pd.DataFrame({"hook": ["h.0.ln_1"] * 2, "channel": [7, 3], "absmax": [v, 2.0]})
    tokens = pd.DataFrame({"hook": ["h.0.ln_1"], "first_token_ratio": [v], "delimiter_ratio": [1.5]})
    info = {**_info(v), "model": {"name": "toy", "source": "toy"}, "kind": "causal_lm", "weights_origin": None}
    return QuantStudyResult("toy", "causal_lm", settings, outliers, channels, tokens, info)


def _same_quant_study(a: QuantStudyResult, b: QuantStudyResult) -> None:
    assert (a.model, a.kind) == (b.model, b.kind) and a.info == b.info and len(a.settings) == len(b.settings)
    for sa, sb in zip(a.settings, b.settings):
        _same_setting(sa, sb)
    for name in ("outlier_summary", "outlier_channels", "token_summary"):
        assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=False)
    assert a.metrics == b.metrics  # reads top_channels "7" back as text
    assert_frame_equal(a.headline_frame(), b.headline_frame())


def _pair(v: float) -> PairResult:
    effects = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "effect_fp": [v, 0.25, -0.5],
                            "effect_quantized": [v / 2, 0.0, -0.5]})
    classes = pd.DataFrame({"component": ["L0H0"], "class_fp": ["name_mover"], "class_quantized": [""],
                            "survives": [0], "score": ["copy"], "score_fp": [v], "score_quantized": [math.nan]})
    examples = pd.DataFrame({"example_id": ["e0", "e1"], "spearman": [v, 1.0], "fp_model": "toy",
                             "model": "toy-rtn-w6a6", "method": "saliency"})
    return PairResult(Pair("toy", "toy-rtn-w6a6"),
                      {"clean_logit_diff_retained": Interval(v, v - 0.1, v + 0.1, 8),
                       "effect_correlation": Interval(math.nan, math.nan, math.nan, 0)},
                      {"circuit_containment": 0.5, "circuit_jaccard": v / 4, "fp_faithfulness": math.nan},
                      effects, classes, {"name_mover": Interval(0.0, 0.0, 0.0, 1)},
                      {"saliency": {"token_rank_correlation": Interval(v, 0.5, 1.0, 2), "comprehensiveness_fp": v}},
                      [examples], {**_info(v), "task": "ioi"})


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    return {k: asdict(x) if isinstance(x, Interval) else x for k, x in values.items()}


def _same_pair(a: PairResult, b: PairResult) -> None:
    assert a.pair == b.pair and a.info == b.info
    for name in ("intervals", "numbers", "survival"):
        got, want = _numbers(getattr(a, name)), _numbers(getattr(b, name))
        assert got.keys() == want.keys(), name
        for key in want:
            assert got[key] == pytest.approx(want[key], nan_ok=True), (name, key)
    assert a.drift.keys() == b.drift.keys()
    assert _numbers(a.drift["saliency"]) == _numbers(b.drift["saliency"])
    assert_frame_equal(a.effects, b.effects)
    assert_frame_equal(a.classes, b.classes)
    assert len(a.drift_examples) == len(b.drift_examples)
    for fa, fb in zip(a.drift_examples, b.drift_examples):
        assert_frame_equal(fa, fb)


def _edges(v: float) -> EdgeCurves:
    rows = [{"method": m, "seed": seed, "budget": b, "edges": int(b * 1000), "faithfulness": v * b, "ci_low": v * b - 0.1,
             "ci_high": v * b + 0.1} for m, seed in (("eap-ig-inputs", -1), ("random", 0)) for b in (0.001, 0.5)]
    rows.append({"method": "node_circuit", "seed": -1, "budget": 0.05, "edges": 50, "faithfulness": v, "ci_low": v - 0.1,
                 "ci_high": v + 0.1})
    return EdgeCurves(rows, {"eap_ig_inputs_cpr": v, "random_cpr": v / 4}, _info(v))


def _same_edges(a: EdgeCurves, b: EdgeCurves) -> None:
    assert a.info == b.info and a.summary == pytest.approx(b.summary)
    assert_frame_equal(a.to_frame(), b.to_frame(), check_dtype=False)


@dataclass
class Case:
    cls: type
    build: Callable[[float], Any]
    same: Callable[[Any, Any], None]


CASES = {
    "attribution": Case(Attribution, _attribution, _same_attribution),
    "circuits": Case(CircuitResult, _circuit, _same_circuit),
    "edges": Case(EdgeCurves, _edges, _same_edges),
    "weights": Case(StudyResult, _study(StudyResult), _same_study),
    "talking_heads": Case(TalkingHeadsResult, _study(TalkingHeadsResult), _same_study),
    "bigram": Case(BigramResult, _study(BigramResult), _same_study),
    "lnfree": Case(LNFreeResult, _study(LNFreeResult), _same_study),
    "quant_setting": Case(SettingResult, _setting, _same_setting),
    "quant_study": Case(QuantStudyResult, _quant_study, _same_quant_study),
    "quant_interp_pair": Case(PairResult, _pair, _same_pair),
}
NO_FIGURES = {"talking_heads", "bigram", "lnfree"}  # their figures need a real run's tables


def _save(name: str, result: Any, folder: Path, **kwargs: Any) -> Path:
    if name in NO_FIGURES:
        kwargs["figures"] = False
    return result.save(folder, **kwargs)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize("name", CASES)
def test_is_a_result(name):
    case = CASES[name]
    result = case.build(1.0)
    assert isinstance(result, Result) and isinstance(result, case.cls)
    assert result.info["seed"] == 3 and result.info["value"] == 1.0
    assert inspect.ismethod(case.cls.load) and case.cls.load.__self__ is case.cls  # a classmethod
    params = list(inspect.signature(case.cls.save).parameters.values())
    assert [p.name for p in params[:3]] == ["self", "folder", "overwrite"] and params[2].default is False


@pytest.mark.parametrize("name", CASES)
def test_save_then_load_round_trips(name, tmp_path):
    case = CASES[name]
    result = case.build(1.25)
    assert _save(name, result, tmp_path / "r") == tmp_path / "r"
    back = case.cls.load(tmp_path / "r")
    assert type(back) is case.cls
    case.same(back, result)
    with pytest.raises(AssertionError):  # the comparison sees a different value
        case.same(back, case.build(2.5))


@pytest.mark.parametrize("name", CASES)
def test_second_save_is_refused_and_changes_nothing(name, tmp_path):
    case = CASES[name]
    _save(name, case.build(1.25), tmp_path / "r")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match=r"r already holds a result.*overwrite=True"):
        _save(name, case.build(2.5), tmp_path / "r")
    assert _snapshot(tmp_path) == before  # no file changed, none added (no temporary folder left)
    case.same(case.cls.load(tmp_path / "r"), case.build(1.25))


@pytest.mark.parametrize("name", CASES)
def test_overwrite_replaces(name, tmp_path):
    case = CASES[name]
    _save(name, case.build(1.25), tmp_path / "r")
    before = _snapshot(tmp_path / "r")
    _save(name, case.build(2.5), tmp_path / "r", overwrite=True)
    assert _snapshot(tmp_path / "r") != before
    case.same(case.cls.load(tmp_path / "r"), case.build(2.5))


@pytest.mark.parametrize("name", sorted(set(CASES) - NO_FIGURES))
def test_frame_and_plot(name):
    import matplotlib.figure

    result = CASES[name].build(1.25)
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    figures = result.plot()
    figures = figures if isinstance(figures, dict) else {"figure": figures}
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figures.values())


def test_the_weight_studies_refuse_each_others_results(tmp_path):
    _study(BigramResult)(1.0).save(tmp_path / "r", figures=False)
    with pytest.raises(ValueError, match="'bigram' result, not 'lnfree'"):
        LNFreeResult.load(tmp_path / "r")


def test_a_failed_whole_folder_save_keeps_the_previous_result(tmp_path):
    with writing(tmp_path / "r") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with writing(tmp_path / "r", overwrite=True) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("interrupted")
    assert _snapshot(tmp_path) == {"r/a.txt": b"first"}


def test_a_marker_folder_holds_a_result_only_once_its_marker_exists(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "per_example.csv").write_text("x\n")  # another output of the stage
    with writing(tmp_path / "r", marker="result.json") as out:
        assert out == tmp_path / "r"
    (out / "result.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="result.json exists"):
        with writing(tmp_path / "r", marker="result.json"):
            pass
