"""The circuits config group and the whole study on the tiny model."""

from __future__ import annotations

import pytest

from interpipe.io import read_json
from tests.conftest import compose


def test_config_composes_and_validates():
    from stages import schema

    cfg = compose(["circuits.n_prompts=8", "circuits.tasks=[sva]"])
    settings = schema.validate(cfg)
    assert settings.circuits.n_prompts == 8 and settings.circuits.tasks == ["sva"]


def test_config_rejects_unknown_key_and_bad_value():
    from stages import schema

    with pytest.raises(Exception, match="nope"):
        compose(["circuits.nope=1"])
    with pytest.raises(ValueError, match="circuits.selection"):
        schema.validate(compose(["circuits.selection=best"]))


def test_gpu_preset_composes():
    cfg = compose(["experiment=circuits_gpt2_ioi", "model=gpt2"])
    assert cfg.circuits.tasks[0] == "ioi" and cfg.circuits.n_prompts >= 100


def test_smollm2_preset_composes_and_validates():
    from stages import schema

    settings = schema.validate(compose(["model=smollm2", "circuits=smollm2"])).circuits
    assert settings.rank_with == "attribution" and settings.curve_points > 0 and not settings.single_ablations
    assert settings.tasks == ["ioi", "colored_objects", "laundry_list", "sva", "induction"]  # from the default


@pytest.mark.slow
def test_study_writes_outputs(tiny_folder, data_root, tmp_path):
    from interpipe.circuits import CircuitSettings, run_circuits

    # top 3 heads: a random tiny model reaches no faithfulness target below all 8 heads, and whole-model
    # circuits are not compared across tasks (tests/circuits/test_reuse.py)
    settings = CircuitSettings(tasks=["sva", "ioi"], n_prompts=8, grids=["resid_pre", "z"], min_logit_gap=-1e9,
                               neuron_ablation=4, overlap=["sva", "ioi"], reference_prompts=8, random_circuits=3,
                               completeness_heads=2, selection="top_k", top_k=3)
    record = {"model": {"name": "tiny", "source": str(tiny_folder)}, "seed": 5, "config_hash": "abc123"}
    metrics = run_circuits(settings, tiny_folder, data_root, tmp_path, model_name="tiny", info=record)
    task = tmp_path / "tiny-sva"
    info = read_json(task / "info.json")  # what produced the folder: the run record, the task, the settings
    assert {k: info[k] for k in record} == record and info["task"] == "sva" and info["settings"]["n_prompts"] == 8
    for name in ("metrics.json", "effects.parquet", "circuit.json", "dla.png", "patching.png", "attribution.png",
                 "headline_faithfulness.png", "attention_top_heads.png"):
        assert (task / name).exists(), name
    import pandas as pd

    frame = pd.read_parquet(task / "effects.parquet")
    assert {"analysis", "method", "direction", "layer", "head", "position", "effect"} <= set(frame.columns)
    key = ["analysis", "method", "direction", "layer", "head", "position", "component", "neuron"]
    assert not frame.duplicated([k for k in key if k in frame.columns]).any()  # every grid labelled apart
    assert set(frame["method"]) >= {"exact", "attribution", "dla"}
    assert set(frame.loc[frame["method"] == "exact", "direction"]) == {"denoising", "noising"}
    assert "sva/faithfulness_ci_low" in metrics and "sva/random_faithfulness" in metrics
    assert {"sva/cpr", "sva/cmd_ci_low"} <= set(metrics)  # the curve's MIB summaries
    # a random tiny model's top 3 heads are reported (headline, reuse) only where they pass the held-out check
    held = [t for t in ("sva", "ioi") if metrics[f"{t}/heldout_above_target"]]
    reuse = pd.read_csv(tmp_path / "reuse.csv")
    assert len(reuse) == (2 if len(held) == 2 else 0) and read_json(tmp_path / "overlap.json")["tasks"] == held
    assert {"jaccard_chance", "containment_chance"} <= set(reuse.columns)
    from interpipe.headline import read_headline

    headline = read_headline(tmp_path / "headline.csv")  # the report's reader accepts it
    assert {"cpr", "cmd", "logit_gap"} <= set(headline["metric"]) and set(headline["task"]) == {"sva", "ioi"}
    assert set(headline.loc[headline["metric"] == "faithfulness", "task"]) == set(held)
    assert set(headline.loc[headline["metric"] == "circuit_found", "task"]) == {"sva", "ioi"} - set(held)
    assert set(headline["method"]) == {"model", "circuit", "edge_eap_ig_inputs", "edge_eap", "edge_random"}  # IOI's edges
    assert set(headline.loc[headline["method"].str.startswith("edge_"), "task"]) == {"ioi"}  # circuits.edge_tasks
    from interpipe.circuits.edges import EdgeCurves

    edges = EdgeCurves.load(tmp_path / "tiny-ioi" / "edges")  # curves.csv, summary.json, edge_faithfulness.png
    assert set(edges.to_frame()["method"]) >= {"eap-ig-inputs", "eap", "random"}
    assert (tmp_path / "tiny-ioi" / "edges" / "edge_faithfulness.png").exists()
    assert "ioi/edge_eap_ig_inputs_cpr" in metrics and "sva/edge_seconds" not in metrics
    classes = pd.read_csv(tmp_path / "tiny-ioi" / "ioi_heads.csv")  # IOI head evidence, one row per head
    assert len(classes) == 8 and classes["in_circuit"].sum() == metrics["ioi/circuit_heads"]
    assert {"copy_score", "negative_copy_score", "name_mover_receiver", "s_inhibition_effect"} <= set(classes.columns)
    assert classes["copy_score"].notna().sum() == min(settings.copy_heads, 8)
    senders = classes["s_inhibition_effect"].notna().sum()
    effects = pd.read_parquet(tmp_path / "tiny-ioi" / "effects.parquet")
    assert (effects["analysis"] == "s_inhibition_path").any() == (senders > 0)
    assert classes["copy_score"].dropna().between(0, 1).all()
    assert (tmp_path / "tiny-ioi" / "headline_ioi_heads.png").exists()
