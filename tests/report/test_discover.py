"""Known outputs in, exact tidy rows out."""

from __future__ import annotations

import pytest

from interpipe.report import COLUMNS, ReportSettings, find_runs, tidy_results
from interpipe.report.discover import config_hash, split_task
from tests.report.synthetic import make_repo

SWEEP = "multirun/2026-01-01/10-00-00/attribute.method=ig,attribute.steps=8,model=toy"
EXPECTED = [  # study, stage, model, method, task, setting, metric, value, run_dir
    ("attribution", "attribute", "toy", "", "", "", "stage_seconds", 3.0, "outputs/attribute/toy"),
    ("attribution", "attribute", "toy", "ig", "", "", "seconds_per_example", 0.01, "outputs/attribute/toy"),
    ("attribution", "attribute", "toy", "ig", "ioi", "", "comprehensiveness", 0.7, "outputs/attribute/toy/ig"),
    ("attribution", "attribute", "toy", "ig", "ioi", "", "sufficiency", 0.3, "outputs/attribute/toy/ig"),
    ("attribution", "attribute", "toy", "ig", "ioi", "attribute.steps=8", "comprehensiveness", 0.75, SWEEP),
    ("attribution", "attribute", "toy", "saliency", "ioi", "", "comprehensiveness", 0.5,
     "outputs/attribute/toy/saliency"),
    ("attribution", "attribute", "toy", "saliency", "ioi", "", "sufficiency", 0.2, "outputs/attribute/toy/saliency"),
    ("foundation", "evaluate", "toy", "", "ioi", "", "accuracy", 0.9, "outputs/evaluate/toy"),
    ("foundation", "evaluate", "toy", "", "ioi", "", "loss", 0.25, "outputs/evaluate/toy"),
    ("foundation", "model", "toy", "", "", "", "n_params", 1000.0, "outputs/models/toy"),
    ("foundation", "model", "toy", "", "", "", "stage_seconds", 2.0, "outputs/models/toy"),
    ("foundation", "prepare", "", "", "", "", "stage_seconds", 1.5, "outputs/data"),
    ("foundation", "prepare", "", "", "ioi", "", "train", 60.0, "outputs/data"),
    ("quantization", "quantize", "minilm", "os_plus", "", "w8a8", "sqnr_db", 25.0, "outputs/quantize/minilm/os_plus/w8a8"),
    ("quantization", "quantize", "minilm", "os_plus", "sentiment", "w8a8", "accuracy", 0.85,
     "outputs/quantize/minilm/os_plus/w8a8"),
    ("quantization", "quantize", "minilm", "rtn", "", "w8a8", "sqnr_db", 20.0, "outputs/quantize/minilm/rtn/w8a8"),
    ("quantization", "quantize", "minilm", "rtn", "sentiment", "w8a8", "accuracy", 0.8,
     "outputs/quantize/minilm/rtn/w8a8"),
    ("weights", "talking_heads", "toy", "", "laundry_list", "", "accuracy", 0.6, "outputs/talking_heads/toy"),
]


@pytest.fixture
def results(tmp_path):
    make_repo(tmp_path)
    settings = ReportSettings()
    return tidy_results(find_runs(tmp_path, settings), settings.tasks)


def test_rows_are_exactly_the_known_values(results):
    assert list(results.columns) == COLUMNS
    got = [tuple(row) for row in results[COLUMNS[:-1]].itertuples(index=False)]
    assert got == EXPECTED


def test_config_hash_is_the_saved_config(results):
    by_dir = dict(zip(results["run_dir"], results["config_hash"]))
    assert by_dir["outputs/attribute/toy/ig"] == config_hash(
        {"model": {"name": "toy"}, "attribute": {"methods": ["saliency", "ig"]}})
    assert by_dir["outputs/attribute/toy/ig"] == by_dir["outputs/attribute/toy/saliency"]  # one execution
    assert by_dir["outputs/talking_heads/toy"] == ""  # no .hydra folder: no config to hash
    assert len(by_dir[SWEEP]) == 12


def test_ignores_temporary_broken_and_report_folders(results):
    dirs = set(results["run_dir"])
    assert not any(".tmp-" in d or d.startswith("outputs/report") or "broken" in d for d in dirs)


def test_sweep_stage_from_a_group_choice(tmp_path):
    from tests.report.synthetic import write_hydra, write_metrics

    job = tmp_path / "multirun" / "d" / "t" / "weights.lam=0.1"
    write_hydra(job, {"model": {"name": "toy"}}, "weights", ["weights.lam=0.1"], multirun=True,
                choices={"weights": "bigram", "model": "toy"})
    write_metrics(job, {"bigram_corr": 0.4})
    row = tidy_results(find_runs(tmp_path, ReportSettings())).iloc[0]
    assert (row["study"], row["stage"], row["model"], row["setting"]) == ("weights", "bigram", "toy", "weights.lam=0.1")


@pytest.mark.parametrize("name, expected", [
    ("ioi/accuracy", ("ioi", "accuracy")),
    ("colored_objects.logit_diff", ("colored_objects", "logit_diff")),
    ("bigram_text_ce", ("bigram_text", "ce")),
    ("sqnr_db", ("", "sqnr_db")),
    ("ioi", ("", "ioi")),
])
def test_split_task(name, expected):
    assert split_task(name, list(ReportSettings().tasks)) == expected


def test_model_method_setting_folders_in_a_sweep(tmp_path):
    """The quantize stage's layout: <sweep>/<overrides>/<model>-<method>-<bits>-<granularity>/."""
    from tests.report.synthetic import write_hydra, write_metrics

    job = tmp_path / "multirun" / "quantize_sweep" / "model=toy,quantize.bits=[w8a8],quantize.methods=[rtn]"
    write_hydra(job, {"model": {"name": "toy"}}, "quantize",
                ["model=toy", "quantize.methods=[rtn]", "quantize.bits=[w8a8]", "logger=none"], multirun=True)
    write_metrics(job / "toy-rtn-w8a8-per_tensor", {"sqnr_db": 21.0})
    row = tidy_results(find_runs(tmp_path, ReportSettings())).iloc[0]
    assert (row["study"], row["stage"], row["model"], row["method"], row["setting"]) == (
        "quantization", "quantize", "toy", "rtn", "quantize.bits=[w8a8],w8a8-per_tensor")


def test_paper_pipeline_folders(tmp_path):
    """pipelines/<study>/dvc.yaml write under outputs/paper/...: the prefix goes to the setting."""
    from tests.report.synthetic import write_hydra, write_metrics

    models = tmp_path / "outputs" / "paper" / "quantize" / "models" / "gpt2"
    write_hydra(models, {"model": {"name": "gpt2"}}, "model", ["model=gpt2"])
    write_metrics(models, {"n_params": 124.0})
    quant = tmp_path / "outputs" / "paper" / "quantize" / "gpt2"
    write_hydra(quant, {"model": {"name": "gpt2"}}, "quantize", ["model=gpt2"])
    write_metrics(quant / "gpt2-osplus-w6a6-per_tensor", {"sqnr_db": 30.0})
    rows = tidy_results(find_runs(tmp_path, ReportSettings()))
    got = [tuple(r) for r in rows[["study", "stage", "model", "method", "setting", "metric"]].itertuples(index=False)]
    assert got == [("foundation", "model", "gpt2", "", "paper/quantize", "n_params"),
                   ("quantization", "quantize", "gpt2", "osplus", "paper,w6a6-per_tensor", "sqnr_db")]


def test_sweep_stage_from_a_config_value(tmp_path):
    from tests.report.synthetic import write_hydra, write_metrics

    job = tmp_path / "multirun" / "sweep_bigram" / "t" / "weights.bigram.l0_lambda=10"
    write_hydra(job, {"model": {"name": "toy"}, "weights": {"study": "bigram", "bigram": {"l0_lambda": 10}}},
                "weights", ["experiment=sweep_bigram", "weights.bigram.l0_lambda=10"], multirun=True,
                choices={"weights": "default", "experiment": "sweep_bigram"})
    write_metrics(job, {"sparsity": 0.9})
    row = tidy_results(find_runs(tmp_path, ReportSettings())).iloc[0]
    assert (row["study"], row["stage"], row["setting"]) == (
        "weights", "bigram", "experiment=sweep_bigram,weights.bigram.l0_lambda=10")


def test_run_record_wins_over_the_folder_name(tmp_path):
    """A stage run into any folder is identified by its run.json, not by where it was written."""
    from tests.report.synthetic import write_metrics, write_run

    job = tmp_path / "outputs" / "my_experiment" / "attempt3"
    write_run(job, "weights", "smollm2", {"seed": 1}, ["model=smollm2", "weights.study=lnfree"], setting="lnfree")
    write_metrics(job, {"ce_lnfree": 3.0})
    write_metrics(job / "smollm2-ioi", {"logit_diff": 2.0})  # a study's sub-run folder below the execution
    rows = tidy_results(find_runs(tmp_path, ReportSettings()))
    got = [tuple(r) for r in rows[["study", "stage", "model", "method", "task", "setting", "metric"]].itertuples(index=False)]
    assert got == [("weights", "lnfree", "smollm2", "", "", "", "ce_lnfree"),
                   ("weights", "lnfree", "smollm2", "", "ioi", "", "logit_diff")]
    assert set(rows["config_hash"]) == {config_hash({"seed": 1})}
