"""Synthetic stage output folders with known values, shaped like real `dvc repro` and sweep outputs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_hydra(folder: Path, config: dict, job_name: str, overrides: list[str] | None = None,
                multirun: bool = False, choices: dict | None = None) -> None:
    """Write the `.hydra/` files Hydra leaves in an execution's output folder."""
    hydra_dir = folder / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides or [])))
    hydra = {"hydra": {"mode": "MULTIRUN" if multirun else "RUN", "job": {"name": job_name},
                       "runtime": {"choices": dict(choices or {})}}}
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(hydra))


def write_run(folder: Path, stage: str, model: str, config: dict, overrides: list[str] | None = None,
              multirun: bool = False, **fields) -> None:
    """Write the ``run.json`` a stage execution leaves (the fields the report reads)."""
    from interpipe.report.discover import config_hash

    folder.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "study": stage, "model": {"name": model}, "tasks": [], "method": None,
              "setting": None, "overrides": list(overrides or []), "multirun": multirun,
              "config_hash": config_hash(config), **fields}
    (folder / "run.json").write_text(json.dumps(record))


def write_metrics(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def write_png(path: Path, width: int = 40, height: int = 30, color=(200, 30, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)


def make_repo(root: Path) -> Path:
    """Outputs of every kind the report must understand. Returns ``root``.

    - foundation: outputs/data (model-free), outputs/models/toy with a card, outputs/evaluate/toy
    - attribution: one execution (``.hydra`` at outputs/attribute/toy) writing one folder per method,
      with its ``headline.csv`` and a ``headline_*.png`` key figure
    - quantization: outputs/quantize/minilm/<method>/<setting>/ with ``.hydra`` per model
    - weights: outputs/talking_heads/toy/ without any ``.hydra`` or ``run.json`` (an old run: model read off the path)
    - ``run.json`` (what a stage writes) for evaluate, attribute and the sweep; the rest are older layouts
    - a multirun sweep of the attribute stage over a method and a step count
    - noise the walk must ignore: a hidden temporary folder, a broken metrics.json, the report itself
    """
    out = root / "outputs"
    write_hydra(out / "data", {"model": {"name": "toy"}, "seed": 0}, "prepare")
    write_metrics(out / "data", {"ioi/train": 60, "stage_seconds": 1.5})
    toy = out / "models" / "toy"
    write_hydra(toy, {"model": {"name": "toy"}, "seed": 0}, "model", ["model=toy"])
    write_metrics(toy, {"n_params": 1000, "stage_seconds": 2.0})
    (toy / "card.json").write_text(json.dumps({"name": "toy", "source": "toy", "kind": "causal_lm",
                                               "n_params": 1000, "n_layers": 2, "training_curve": [{"step": 0}]}))
    write_hydra(out / "evaluate" / "toy", {"model": {"name": "toy"}}, "evaluate", ["model=toy"])
    write_run(out / "evaluate" / "toy", "evaluate", "toy", {"model": {"name": "toy"}}, ["model=toy"])
    write_metrics(out / "evaluate" / "toy", {"ioi/accuracy": 0.9, "ioi/loss": 0.25})

    attribute = out / "attribute" / "toy"
    write_hydra(attribute, {"model": {"name": "toy"}, "attribute": {"methods": ["saliency", "ig"]}}, "attribute")
    write_run(attribute, "attribute", "toy", {"model": {"name": "toy"}, "attribute": {"methods": ["saliency", "ig"]}},
              tasks=["ioi"])
    write_metrics(attribute, {"saliency/ioi/comprehensiveness": 0.5, "ig/seconds_per_example": 0.01,
                              "stage_seconds": 3.0})  # the stage's own summary of its method folders
    write_metrics(attribute / "saliency", {"ioi/comprehensiveness": 0.5, "ioi/sufficiency": 0.2})
    write_metrics(attribute / "ig", {"ioi/comprehensiveness": 0.7, "ioi/sufficiency": 0.3, "note": "text"})
    write_png(attribute / "saliency" / "heatmap.png", width=2000, height=500)
    write_png(attribute / "faithfulness_curve.png")
    (attribute / "headline.csv").write_text(  # the study's quoted numbers, one with no interval
        "model,task,method,metric,value,ci_low,ci_high,baseline,baseline_value\n"
        "toy,ioi,ig,comprehensiveness,0.7,0.6,0.8,random,0.2\n"
        "toy,ioi,saliency,comprehensiveness,0.5,0.4,0.55,random,0.2\n"
        "toy,all,normxlogit,speedup_vs_ig,40,,,integrated_gradients,1\n"
        "toy,all,oracle,informative,1,,,oracle above the floor,\n"  # the study can tell ...
        "toy,all,normxlogit,normalised_comprehensiveness_k,0.4,0.1,0.7,random floor 0 / oracle 1,0\n")  # ... a finding
    write_png(attribute / "headline_faithfulness.png", width=1200, height=600, color=(30, 160, 30))
    (attribute / "operators.csv").write_text("operator,method,metric,value\npad,ig,comprehensiveness,0.71234\n"
                                             "mean,ig,comprehensiveness,\n")  # a key table (report.key_tables)

    quantize = out / "quantize" / "minilm"
    write_hydra(quantize, {"model": {"name": "minilm"}}, "quantize", ["model=minilm"])
    write_metrics(quantize / "rtn" / "w8a8", {"sentiment/accuracy": 0.8, "sqnr_db": 20.0})
    write_metrics(quantize / "os_plus" / "w8a8", {"sentiment/accuracy": 0.85, "sqnr_db": 25.0})
    write_png(quantize / "sqnr.png", color=(30, 30, 200))

    write_metrics(out / "talking_heads" / "toy", {"laundry_list": {"accuracy": 0.6}})

    sweep = root / "multirun" / "2026-01-01" / "10-00-00" / "attribute.method=ig,attribute.steps=8,model=toy"
    write_hydra(sweep, {"model": {"name": "toy"}, "attribute": {"method": "ig", "steps": 8}}, "attribute",
                ["attribute.method=ig", "attribute.steps=8", "model=toy"], multirun=True)
    write_run(sweep, "attribute", "toy", {"model": {"name": "toy"}, "attribute": {"method": "ig", "steps": 8}},
              ["attribute.method=ig", "attribute.steps=8", "model=toy"], multirun=True)
    write_metrics(sweep, {"ioi/comprehensiveness": 0.75})

    write_metrics(out / ".report.tmp-abc", {"x": 1.0})  # an interrupted stage's temporary folder
    (out / "broken").mkdir()
    (out / "broken" / "metrics.json").write_text("{not json")
    write_metrics(out / "report", {"n_runs": 99})  # the previous report
    return root


def write_noisy_png(path: Path, width: int, height: int, seed: int) -> None:
    """A figure-sized PNG that compresses about as badly as a dense matplotlib figure."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    band = slice(height // 4, height // 4 + max(height // 6, 1))  # a noisy band: dots, lines, heatmap cells
    pixels[band] = rng.integers(0, 256, size=pixels[band].shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


HEADLINE_STAGES = {"attribute": "attribution", "circuits": "circuits", "talking_heads": "weights",
                   "quantize": "quantization", "quant_interp": "quant_interp"}  # stage -> study of its headline block


def make_full_size_repo(root: Path, n_figures: int = 80) -> Path:
    """:func:`make_repo` at the default pipeline's scale: a headline block for every study of
    :data:`HEADLINE_STAGES` with a full-size key figure, and ``n_figures`` more figures (thumbnails)."""
    make_repo(root)
    out = root / "outputs"
    header = "model,task,method,metric,value,ci_low,ci_high,baseline,baseline_value\n"
    for i, stage in enumerate(s for s in HEADLINE_STAGES if s != "attribute"):
        folder = out / stage / ("toy" if stage != "quant_interp" else "")
        write_run(folder, stage, "toy", {"model": {"name": "toy"}, "stage": stage})
        write_metrics(folder, {"headline_value": 0.5 + i})
        rows = "".join(f"{model},ioi,m{j},score,{0.5 + j / 10},{0.4 + j / 10},{0.6 + j / 10},random,0.1\n"
                       for j in range(8) for model in ("toy", "smollm2"))
        (folder / "headline.csv").write_text(header + rows)
        write_noisy_png(folder / "headline_key.png", 1200, 600, seed=i)
    per_stage = -(-n_figures // len(HEADLINE_STAGES))
    for i in range(n_figures):
        stage = list(HEADLINE_STAGES)[i // per_stage]
        folder = out / stage / ("toy" if stage != "quant_interp" else "")
        write_noisy_png(folder / f"figure_{i:03d}.png", 1000, 500, seed=100 + i)
    return root
