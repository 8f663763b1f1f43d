"""The Hydra stages end to end: outputs, metrics, W&B offline run, atomicity, evaluation numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from interpipe.models.evaluate import evaluate_task
from interpipe.models import load_model
from interpipe.models.tokens import answer_token_id
from tests.conftest import TINY_DATA, TINY_TOY, run_module


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """prepare -> model(toy) -> evaluate through the real stage entry points, W&B offline."""
    root = tmp_path_factory.mktemp("pipe")
    paths = [f"paths.data={root}/data", f"paths.models={root}/models", f"logger.dir={root}/wandb"]
    steps = [
        ("stages.prepare", [*TINY_DATA, f"hydra.run.dir={root}/data"]),
        ("stages.model", ["model=toy", *TINY_TOY, f"hydra.run.dir={root}/models/toy"]),
        ("stages.evaluate", ["model=toy", f"hydra.run.dir={root}/evaluate/toy"]),
    ]
    for module, args in steps:
        proc = run_module(module, *args, *paths)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_stage_outputs_exist(pipeline):
    assert (pipeline / "data" / "ioi" / "dataset_dict.json").exists()
    assert (pipeline / "models" / "toy" / "model.safetensors").exists()
    card = json.loads((pipeline / "models" / "toy" / "card.json").read_text())
    assert card["source"] == "toy" and card["n_layers"] == 2 and card["seconds"] > 0
    assert (pipeline / "models" / "toy" / "training_curve.png").exists()
    metrics = json.loads((pipeline / "evaluate" / "toy" / "metrics.json").read_text())
    loaded = load_model(pipeline / "models" / "toy")
    for task in ("ioi", "sva", "colored_objects", "laundry_list", "induction"):  # the stage wrote the library's numbers
        expected = evaluate_task(loaded, pipeline / "data", task)  # (its batching: test_evaluation_matches_one_prompt_at_a_time)
        assert metrics[f"{task}/accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        assert metrics[f"{task}/loss"] == pytest.approx(expected["loss"], rel=1e-5) and expected["loss"] > 0
    assert (pipeline / "evaluate" / "toy" / ".hydra" / "config.yaml").exists()


def test_wandb_offline_run_holds_config_and_metrics(pipeline):
    runs = sorted((pipeline / "wandb").glob("wandb/offline-run-*"))
    assert len(runs) == 3
    summaries = [_inspect(r) for r in runs]
    evaluate = next(s for s in summaries if "ioi/accuracy" in json.dumps(s))
    metrics = json.loads((pipeline / "evaluate" / "toy" / "metrics.json").read_text())
    blob = json.dumps(evaluate)
    assert "model" in blob and '"toy"' in blob  # the resolved config
    assert f"{metrics['ioi/accuracy']}"[:6] in blob  # the metric value


def _inspect(run_dir: Path) -> dict:
    proc = subprocess.run([str(Path(__import__("sys").executable).parent / "wandb"), "leet", "inspect", "--summary",
                           "--json", str(run_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_evaluation_matches_one_prompt_at_a_time(tiny_toy_folder, data_root):
    """Batched, padded evaluation equals unbatched per-prompt logits computed independently."""
    from interpipe.data import load_task

    loaded = load_model(tiny_toy_folder)
    metrics = evaluate_task(loaded, data_root, "ioi", batch_size=3)
    rows = load_task(data_root, "ioi")
    ce, correct, diffs = [], [], []
    for row in rows:
        ids = loaded.tokenizer(row["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = loaded.model(ids).logits[0, -1]
        a, f = answer_token_id(loaded.tokenizer, row["answer"]), answer_token_id(loaded.tokenizer, row["foil"])
        ce.append(float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([a]))))
        correct.append(float(logits.argmax() == a))
        diffs.append(float(logits[a] - logits[f]))
    assert metrics["loss"] == pytest.approx(sum(ce) / len(ce), rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert metrics["logit_diff"] == pytest.approx(sum(diffs) / len(diffs), rel=1e-4, abs=1e-5)


def test_failed_stage_leaves_no_half_written_output(tmp_path, data_root):
    """A stage that dies mid-way leaves no metrics.json and none of its partial files."""
    out = tmp_path / "models" / "toy"
    proc = run_module("stages.model", "model=toy", *TINY_TOY, "model.toy.n_positions=4",
                      f"paths.data={data_root}", f"hydra.run.dir={out}", "logger=none")
    assert proc.returncode != 0 and "n_positions" in proc.stderr
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")] == []


def test_prompt_longer_than_context_is_a_clear_error(tiny_toy_folder, tmp_path):
    from interpipe.models.tokens import encode_prompts

    loaded = load_model(tiny_toy_folder)
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        encode_prompts(loaded.tokenizer, ["Mary " * 100], 64)
    with pytest.raises(ValueError, match="empty"):
        encode_prompts(loaded.tokenizer, [], 64)


def test_same_config_same_metrics(pipeline, tmp_path):
    """Re-running evaluate on the same model gives the same numbers within the stated tolerance
    (interpipe.report.reproduce: CPU BLAS may sum in another order in another process)."""
    from interpipe.report.reproduce import differences, metric_files

    root = pipeline
    proc = run_module("stages.evaluate", "model=toy", f"paths.data={root}/data", f"paths.models={root}/models",
                      f"hydra.run.dir={tmp_path}/again", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = metric_files(root / "evaluate" / "toy"), metric_files(tmp_path / "again")
    assert first["metrics.json"] and differences(first, second) == []


def test_minilm_embeddings_separate_sentiment(data_root, tmp_path):
    """The real MiniLM's nearest-centroid probe classifies the planted-cue reviews well."""
    from interpipe.models import ModelCard, describe, load_pretrained, save_model_folder

    model, tok, _ = load_pretrained("minilm", "encoder")
    save_model_folder(tmp_path / "minilm", model, tok, describe(model, "minilm", "minilm", "encoder"))
    loaded = load_model(tmp_path / "minilm")
    assert isinstance(loaded.card, ModelCard)
    metrics = evaluate_task(loaded, data_root, "sentiment")
    assert metrics["accuracy"] >= 0.75 and metrics["logit_diff"] > 0
    with pytest.raises(ValueError, match="needs a causal LM"):
        evaluate_task(loaded, data_root, "ioi")


def test_results_carry_the_run_record(pipeline):
    """Every result's info holds the run.json fields that say what ran (model origin, seed, config hash, revision)."""
    paths = [f"paths.data={pipeline}/data", f"paths.models={pipeline}/models", "logger=none"]
    runs = {
        "attribute": ["attribute.methods=[saliency,random]", "attribute.n_examples=4", "attribute.operators=[]",
                      "attribute.layerwise=false", "attribute.n_heatmaps=0"],
        "quantize": ["quantize.methods=[rtn]", "quantize.bits=[w8a8]", "quantize.calib_seeds=[0]",
                     "quantize.calib_samples=4", "quantize.eval_samples=4", "quantize.probe_samples=2",
                     "quantize.save_migrated=false"],
    }
    for stage, args in runs.items():
        proc = run_module(f"stages.{stage}", "model=toy", *args, *paths, "seed=3", f"hydra.run.dir={pipeline}/{stage}/toy")
        assert proc.returncode == 0, proc.stderr[-3000:]
    infos = {
        "attribute": json.loads((pipeline / "attribute" / "toy" / "saliency" / "attribution.json").read_text())["info"],
        "quantize": json.loads((pipeline / "quantize" / "toy" / "toy-rtn-w8a8-paper" / "info.json").read_text()),
    }
    for stage, info in infos.items():
        record = json.loads((pipeline / stage / "toy" / "run.json").read_text())
        for key in ("stage", "study", "model", "seed", "config_hash", "git_revision", "libraries", "device", "dtype"):
            assert info[key] == record[key], (stage, key)
        assert info["seed"] == 3 and info["model"]["name"] == "toy" and info["model"]["source"] == "toy"
