"""Pairs across the survival frontier (interpipe/quant_interp/pairs.py) on a frontier table with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import yaml

from interpipe.quant import frontier
from interpipe.quant_interp import pairs as fpairs

SOLVED, UNSOLVED = (0.9, 0.7, 1.0), (0.55, 0.3, 0.8)  # (estimate, ci_low, ci_high) of the pairwise accuracy
SERIES = "weights+activations"


def _setting(method: str, bits: str, acc: tuple[float, float, float], fp=(0.95, 0.9, 1.0)):
    key = "pairwise_acc/ioi"
    metrics = {key: acc[0], f"{key}_ci_low": acc[1], f"{key}_ci_high": acc[2], "n_seeds": 3,
               f"fp_{key}": fp[0], f"fp_{key}_ci_low": fp[1], f"fp_{key}_ci_high": fp[2]}
    return SimpleNamespace(method=method, bits=bits, metrics=metrics)


def _grid(method: str, solved: dict[str, bool], fp=(0.95, 0.9, 1.0)) -> list:
    return [_setting(method, bits, SOLVED if ok else UNSOLVED, fp) for bits, ok in solved.items()]


@pytest.fixture
def table(tmp_path):
    """A frontier.csv made by the quantize stage's own code, written and read back as the command reads it."""
    settings = (_grid("rtn", {"w8a8": True, "w6a6": True, "w4a4": False})  # frontier w6a6, below w4a4
                + _grid("smoothquant", {"w8a8": True, "w6a6": False, "w4a4": True})  # non-monotone
                + _grid("osplus", {"w8a8": True, "w6a6": True, "w4a4": True})  # solves everywhere
                + _grid("osplus_shift", {"w8a8": False, "w6a6": False, "w4a4": False})  # never solves
                + _grid("quarot", {"w8a8": True, "w6a6": False, "w4a4": False})  # rotated
                + _grid("rtn", {"w16a8": True, "w16a6": False}))  # activation-only series: not the default
    small = frontier.frontier_rows("m", settings, tasks=("ioi",))
    broken = frontier.frontier_rows("b", _grid("rtn", {"w8a8": False, "w6a6": False}, fp=(0.5, 0.3, 0.7)),
                                    tasks=("ioi",))  # the FP model itself does not solve the task
    path = tmp_path / "frontier.csv"
    import pandas as pd

    pd.concat([small, broken], ignore_index=True).to_csv(path, index=False)
    return fpairs.read_frontier(path)


def _sides(selection) -> dict[tuple[str, str, str], str]:
    return {(r.fp, r.method, r.side): r.bits for r in selection.itertuples(index=False)}


def test_each_method_gets_the_setting_at_and_below_its_frontier(table):
    selection = fpairs.select(table)
    assert _sides(selection) == {
        ("m", "rtn", "above"): "w6a6", ("m", "rtn", "below"): "w4a4",
        ("m", "smoothquant", "above"): "w8a8", ("m", "smoothquant", "below"): "w6a6",
        ("m", "osplus", "above"): "w4a4", ("m", "osplus", "below"): "",
        ("m", "osplus_shift", "above"): "", ("m", "osplus_shift", "below"): "w8a8",
        ("m", "quarot", "above"): "w8a8", ("m", "quarot", "below"): "w6a6",
        ("b", "rtn", "above"): "", ("b", "rtn", "below"): ""}
    row = selection.set_index(["fp", "method", "side"])
    assert row.loc[("m", "rtn", "above"), "pairwise_acc_ci_low"] == SOLVED[1]
    assert row.loc[("m", "rtn", "below"), "pairwise_acc_ci_low"] == UNSOLVED[1]
    assert math.isnan(row.loc[("m", "osplus", "below"), "pairwise_acc"])


def test_missing_sides_and_a_broken_series_say_why(table):
    row = fpairs.select(table).set_index(["fp", "method", "side"])
    assert row.loc[("m", "osplus", "below"), "reason"].startswith("solved at every setting of the series (fewest bits: w4a4)")
    assert row.loc[("m", "osplus_shift", "above"), "reason"].startswith("solved at no setting of the series (most bits: w8a8)")
    assert row.loc[("b", "rtn", "above"), "reason"] == "the FP model does not solve ioi: no frontier"
    assert row.loc[("m", "rtn", "above"), "reason"] == "" and row.loc[("m", "rtn", "below"), "reason"] == ""
    # non-monotone: the frontier is the first break going down; w4a4 solving again is named, not taken
    assert row.loc[("m", "smoothquant", "above"), "note"] == "solved again below the frontier at w4a4"
    assert row.loc[("m", "rtn", "above"), "note"] == ""


def test_pairs_exports_and_overrides(table):
    selection = fpairs.select(table)
    chosen = fpairs.pairs(selection)
    assert chosen[0] == {"fp": "m", "quantized": "m-rtn-w6a6", "method": "rtn", "bits": "w6a6", "side": "above"}
    assert {p["quantized"] for p in chosen if p["method"] == "quarot"} == {"m-quarot-w8a8", "m-quarot-w6a6"}
    assert all(p["fp"] == "m" for p in chosen)  # the model whose FP side fails the task has none
    assert fpairs.exports(selection) == {"m": ["rtn-w6a6", "rtn-w4a4", "smoothquant-w8a8", "smoothquant-w6a6",
                                               "osplus-w4a4", "osplus_shift-w8a8", "quarot-w8a8", "quarot-w6a6"]}
    overrides = fpairs.quantize_overrides(selection)["m"]
    assert "'quantize.methods=[rtn,smoothquant,osplus,osplus_shift,quarot]'" in overrides
    assert "'quantize.bits=[w8a8,w6a6,w4a4]'" in overrides
    assert fpairs.pairs_override(selection).startswith(
        "'quant_interp.pairs=[{fp: m, quantized: m-rtn-w6a6, attribution: false}, ")
    rotated = selection[selection["rotated"]]
    assert set(rotated["method"]) == {"quarot"}


def test_other_series_and_method_filter(table):
    act = fpairs.select(table, series="activations")
    assert _sides(act) == {("m", "rtn", "above"): "w16a8", ("m", "rtn", "below"): "w16a6"}
    only = fpairs.select(table, methods=["quarot"])
    assert [p["quantized"] for p in fpairs.pairs(only)] == ["m-quarot-w8a8", "m-quarot-w6a6"]


def test_the_written_preset_is_a_valid_quant_interp_config(table, tmp_path):
    from interpipe.settings.quant_interp import QuantInterpSettings

    text = fpairs.preset(fpairs.select(table), "python -m interpipe.quant_interp.pairs frontier.csv")
    config = yaml.safe_load(text)
    assert config["defaults"] == ["default", "_self_"]
    settings = QuantInterpSettings(pairs=config["pairs"])  # only the keys the study accepts
    assert [p["quantized"] for p in settings.pairs][:2] == ["m-rtn-w6a6", "m-rtn-w4a4"]
    assert all(p["attribution"] is False for p in settings.pairs)
    assert "# above: quarot w8a8" in text and "rotated residual basis" in text
    assert "m osplus below: solved at every setting" in text  # sides without a setting stay as comments
    assert "'quantize.export=[rtn-w6a6,rtn-w4a4," in text


def test_command_prints_and_writes(table, tmp_path, capsys):
    source = tmp_path / "frontier.csv"
    out = tmp_path / "frontier.yaml"
    assert fpairs.main([str(source), "--write", str(out), "--attribution"]) == 0
    printed = capsys.readouterr().out
    assert "m-quarot-w8a8" in printed and "python -m stages.quantize model=m " in printed
    assert "attribution: true" in printed
    assert yaml.safe_load(out.read_text())["pairs"][0] == {"fp": "m", "quantized": "m-rtn-w6a6"}
    assert fpairs.main([str(source), "--task", "laundry_list"]) == 1  # no such rows: refused


def test_the_committed_preset_composes():
    from stages import schema
    from tests.conftest import compose

    settings = schema.validate(compose(["quant_interp=frontier"])).quant_interp
    assert settings.pairs and all(set(p) <= {"fp", "quantized", "attribution"} for p in settings.pairs)
    assert settings.circuits_root == "outputs/circuits"
