"""The study driver, the stage, the configs and the classifier fine-tuning, on tiny models."""

from __future__ import annotations

import json

import pytest

from interpipe.attribution import METHODS, AttributeSettings
from interpipe.attribution.study import run_attribute
from interpipe.models import describe, save_model_folder

from tests.conftest import compose, run_module

# a random classifier's predictions barely move (drops ~1e-3): the soft metrics' guard is lowered so they exist
SMALL = AttributeSettings(n_examples=6, ig_steps=4, ratios=[0.2, 0.6], n_heatmaps=1, top_k=2, floor_draws=2,
                          soft_min_drop=1e-6)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, bert):
    model, tokenizer = bert
    folder = tmp_path_factory.mktemp("models") / "minilm-sentiment"
    save_model_folder(folder, model, tokenizer, describe(model, "minilm-sentiment", "minilm", "sequence_classifier"))
    return folder


def test_run_attribute_writes_one_folder_per_method(classifier_folder, data_root, tmp_path):
    summary = run_attribute(SMALL, classifier_folder, data_root, tmp_path)
    for method in METHODS:
        metrics = json.loads((tmp_path / method / "metrics.json").read_text())
        for key in ("comprehensiveness", "sufficiency", "soft_comprehensiveness", "soft_sufficiency",
                    "comprehensiveness_accuracy", "sufficiency_accuracy", "plausibility_map", "cue_mass",
                    "seconds_per_example", "sentiment/comprehensiveness"):
            assert key in metrics, (method, key)
        assert (tmp_path / method / "attributions.parquet").exists()
        assert (tmp_path / method / "heatmap.png").exists()
        assert f"{method}/comprehensiveness" in summary
    layers = (tmp_path / "normxlogit" / "layerwise.csv").read_text().splitlines()
    assert len(layers) == 1 + 3  # header + embedding output + 2 layers
    assert (tmp_path / "rank_agreement.csv").exists()


def test_every_metric_has_its_interval_and_baselines(classifier_folder, data_root, tmp_path):
    import pandas as pd

    from interpipe.stats import is_interval_key

    summary = run_attribute(SMALL, classifier_folder, data_root, tmp_path)
    counts = ("n_examples", "n_examples_with_cues", "seconds", "seconds_per_example", "examples_per_second",
              "relative_gap_max", "steps_mean", "steps_max", "converged_fraction", "win_rate_vs_random")
    for method in METHODS:
        metrics = json.loads((tmp_path / method / "metrics.json").read_text())
        for key, value in metrics.items():
            if not is_interval_key(key) and key.split("/")[-1] not in counts:
                low, high = metrics[key + "_ci_low"], metrics[key + "_ci_high"]
                assert low <= value <= high, (method, key)
        if method != "random":
            assert "vs_random/comprehensiveness_ci_low" in metrics
        if method not in ("random", "integrated_gradients"):
            assert "vs_ig/sufficiency_ci_high" in metrics
    ig = json.loads((tmp_path / "integrated_gradients" / "metrics.json").read_text())
    gaps = pd.read_csv(tmp_path / "integrated_gradients" / "completeness.csv")
    assert ig["relative_gap_median"] == pytest.approx(gaps["relative_gap"].median())
    assert {"relative_gap", "steps", "f_input", "f_baseline"} <= set(gaps.columns) and len(gaps) == 6
    ops = pd.read_csv(tmp_path / "operators.csv")
    assert set(ops["operator"]) == {"mask", "pad", "delete", "mean"} and ops["available"].all()
    wins = pd.read_csv(tmp_path / "winrate.csv")
    assert set(wins["method"]) == set(METHODS) - {"random"}
    head = pd.read_csv(tmp_path / "headline.csv")
    assert {"metric", "value", "ci_low", "ci_high", "baseline", "baseline_value"} <= set(head.columns)
    assert (tmp_path / "headline_faithfulness.png").exists()
    assert "normxlogit/by_pad/comprehensiveness_ci_low" in summary


def test_every_attribution_preset_composes():
    from stages import schema

    for overrides in (["model=minilm-sentiment"], ["experiment=attribution_paper"],
                      ["experiment=attribution_hub", "model=gpt2"]):
        settings = schema.validate(compose(overrides))
        assert settings.attribute.methods
    paper = schema.validate(compose(["experiment=attribution_paper"])).attribute
    assert paper.ig_steps == 50 and len(paper.ratios) == 9
    model = schema.validate(compose(["model=minilm-sentiment"])).model
    assert model.kind == "sequence_classifier" and model.finetune_task == "sentiment"


def test_finetune_learns_the_cues(bert, data_root):
    import torch

    from interpipe.data import load_task
    from interpipe.models.finetune import classifier_accuracy, finetune_classifier
    from interpipe.settings.models import FinetuneSettings

    model, tokenizer = bert
    model = type(model)(model.config)  # a fresh copy: the session fixture stays untouched
    rows = list(load_task(data_root, "sentiment", "train"))
    model, curve, seconds = finetune_classifier(model, tokenizer, rows, FinetuneSettings(steps=12, lr=1e-3, log_every=4))
    assert len(curve) == 3 and curve[-1]["loss"] < curve[0]["loss"] and seconds > 0
    assert not model.training
    test_rows = list(load_task(data_root, "sentiment", "test"))
    with torch.no_grad():  # the reference: one example at a time, no padding
        hits = [int(model(**tokenizer(r["prompt"], return_tensors="pt")).logits.argmax(-1)) == int(r["label"])
                for r in test_rows]
    assert classifier_accuracy(model, tokenizer, test_rows) == pytest.approx(sum(hits) / len(hits))
    with pytest.raises(ValueError, match="labelled rows"):
        finetune_classifier(model, tokenizer, list(load_task(data_root, "ioi", "train")), FinetuneSettings(steps=1))


@pytest.mark.slow
def test_attribute_stage_end_to_end(classifier_folder, data_root, tmp_path):
    out = tmp_path / "out"
    proc = run_module("stages.attribute", "model=minilm-sentiment", f"paths.models={classifier_folder.parent}",
                      f"paths.data={data_root}", "logger=none", "attribute.n_examples=4", "attribute.ig_steps=2",
                      "attribute.ratios=[0.5]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "normxlogit/comprehensiveness" in json.loads((out / "metrics.json").read_text())
    assert (out / "integrated_gradients" / "metrics.json").exists()


@pytest.mark.slow
def test_stage_rejects_bad_method_before_loading(tmp_path):
    proc = run_module("stages.attribute", "attribute.methods=[lime]", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "attribute.methods='lime'" in proc.stderr
