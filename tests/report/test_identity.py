"""A sub-run folder is identified from the files its result wrote, whatever the folder is called."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch

from interpipe.report import ReportSettings, find_runs, tidy_results
from interpipe.report.identity import SubRun, describe_sub_run, sub_run_identity
from tests.report.synthetic import write_metrics, write_run

IDENTITY = ["study", "stage", "model", "method", "task", "setting"]


def _record(stage: str, model: str) -> dict:
    """The run identity a stage hands its result (the fields the report reads)."""
    return {"stage": stage, "study": stage, "model": {"name": model}, "tasks": [], "method": None, "setting": None,
            "overrides": [], "multirun": False, "config_hash": "abc123abc123", "seed": 0}


def _write_attribution(folder: Path, method: str) -> None:
    """An attribution method's folder, as the attribute stage leaves it: the result, then metrics."""
    from interpipe.attribution.result import Attribution

    Attribution(method=method, scores=torch.tensor([[0.5, 0.25]]), input_ids=torch.tensor([[1, 2]]),
                attention_mask=torch.tensor([[1, 1]]), target_ids=torch.tensor([3]), example_ids=["e0"],
                tokens=[["a", "b"]], info={**_record("attribute", "toy"), "method": method}).save(folder)
    write_metrics(folder, {"ioi/comprehensiveness": 0.5})


def _write_circuits_task(folder: Path, task: str) -> None:
    """A circuits task folder: ``info.json`` as :func:`interpipe.circuits.study.analyse_task` writes it."""
    from interpipe.settings.circuits import CircuitSettings

    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps(
        {**_record("circuits", "toy"), "task": task, "model_name": "toy", "settings": asdict(CircuitSettings())}))
    write_metrics(folder, {"logit_diff": 2.0})


def _write_quant_setting(folder: Path, method: str, bits: str, protocol: str) -> None:
    """A quantization setting folder, written by :class:`~interpipe.quant.results.SettingResult`."""
    from interpipe.quant.results import SettingResult

    name = f"toy-{method}-{bits}-{protocol}"
    info = {**_record("quantize", "toy"), "name": name, "method": method, "bits": bits, "granularity": protocol}
    SettingResult(name, method, bits, protocol, {"sqnr_db": 20.0}, pd.DataFrame({"layer": ["fc1"]}), pd.DataFrame(),
                  pd.DataFrame({"seed": [0]}), info).save(folder)


KINDS = [  # stage, the folder's own name, how to write it, the identity it must get
    ("attribute", "saliency", lambda f: _write_attribution(f, "saliency"),
     ("attribution", "attribute", "toy", "saliency", "ioi", "")),
    ("circuits", "toy-ioi", lambda f: _write_circuits_task(f, "ioi"),
     ("circuits", "circuits", "toy", "", "ioi", "")),
    ("quantize", "toy-rtn-w8a8-paper", lambda f: _write_quant_setting(f, "rtn", "w8a8", "paper"),
     ("quantization", "quantize", "toy", "rtn", "", "w8a8-paper")),
]


def _identities(repo: Path) -> dict[str, tuple]:
    """``run_dir -> (study, stage, model, method, task, setting)`` of every run the report finds."""
    settings = ReportSettings()
    return {r.run_dir: (r.study, r.stage, r.model, r.method, r.task, r.setting) for r in find_runs(repo, settings)}


@pytest.mark.parametrize("stage, name, write, expected", KINDS, ids=[k[0] for k in KINDS])
def test_a_renamed_sub_run_folder_is_identified_from_its_files(tmp_path, stage, name, write, expected):
    """``x/`` says nothing; the files in it say what ``<name>/`` would have said."""
    home = tmp_path / "outputs" / stage / "toy"
    write_run(home, stage, "toy", {"model": {"name": "toy"}})
    write(home / name)
    write(home / "x")
    found = _identities(tmp_path)
    assert found[f"outputs/{stage}/toy/x"] == found[f"outputs/{stage}/toy/{name}"]
    assert found[f"outputs/{stage}/toy/x"][:4] == expected[:4]
    assert found[f"outputs/{stage}/toy/x"][5] == expected[5]
    rows = tidy_results(find_runs(tmp_path, ReportSettings()))  # the task may come from a metric's prefix
    renamed = rows[rows["run_dir"] == f"outputs/{stage}/toy/x"]
    assert [tuple(r) for r in renamed[IDENTITY].itertuples(index=False)] == [expected]


def test_the_files_win_over_a_misleading_name(tmp_path):
    """A quantization setting folder named like another setting is the setting its ``info.json`` says."""
    home = tmp_path / "outputs" / "quantize" / "toy"
    write_run(home, "quantize", "toy", {"model": {"name": "toy"}})
    _write_quant_setting(home / "toy-smoothquant-w4a4-fine", "osplus", "w6a6", "paper")
    assert _identities(tmp_path)["outputs/quantize/toy/toy-smoothquant-w4a4-fine"] == (
        "quantization", "quantize", "toy", "osplus", "", "w6a6-paper")


def test_describe_sub_run_reads_each_kind(tmp_path):
    _write_attribution(tmp_path / "a", "grad_x_input")
    _write_circuits_task(tmp_path / "c", "sva")
    _write_quant_setting(tmp_path / "q", "smoothquant", "w4a8", "fine")
    assert describe_sub_run(tmp_path / "a") == SubRun(method="grad_x_input")
    assert describe_sub_run(tmp_path / "c") == SubRun(task="sva")
    assert describe_sub_run(tmp_path / "q") == SubRun(method="smoothquant", setting=["w4a8-fine"])


def test_a_folder_without_such_files_falls_back_to_its_name(tmp_path):
    """Older runs (and plain subfolders) have no result files: their names are read instead."""
    write_metrics(tmp_path / "toy-rtn-w8a8-paper", {"sqnr_db": 1.0})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "info.json").write_text(json.dumps({"model": "toy"}))  # a study folder's info, no setting
    assert describe_sub_run(tmp_path / "toy-rtn-w8a8-paper") is None
    assert describe_sub_run(tmp_path / "other") is None
    settings = ReportSettings()
    assert sub_run_identity(tmp_path / "toy-rtn-w8a8-paper", tmp_path, "toy", "", settings) == ("", "rtn", ["w8a8-paper"])
    assert sub_run_identity(tmp_path / "other", tmp_path, "toy", "", settings) == ("", "other", [])


def test_a_plain_folder_below_a_described_one_keeps_the_path_order(tmp_path):
    """``<setting>/outliers/``: the setting from ``info.json``, then the plain folder's name."""
    _write_quant_setting(tmp_path / "x", "rtn", "w8a8", "paper")
    (tmp_path / "x" / "outliers").mkdir()
    assert sub_run_identity(tmp_path / "x" / "outliers", tmp_path, "toy", "", ReportSettings()) == (
        "", "rtn", ["w8a8-paper", "outliers"])
