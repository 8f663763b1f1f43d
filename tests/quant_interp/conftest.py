"""Fixtures of the quantization-interpretability tests: a tiny random GPT-2, a copy with one head's output
zeroed (the planted change), a copy whose logits are negated (a model that fails the task exactly where
the original solves it), each model's circuits-stage results, and hand-made attribution results."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.circuits.conftest import tiny_folder  # noqa: F401 - the tiny random GPT-2 fixture

ZEROED = (1, 0)  # (layer, head) whose output projection the planted copy zeroes
MODELS = ("tiny", "tiny-zeroed", "tiny-negated")


def circuit_settings():
    from interpipe.settings.circuits import CircuitSettings

    return CircuitSettings(tasks=["ioi"], n_prompts=8, grids=["z"], min_logit_gap=-1e9, reference_prompts=8,
                           random_circuits=3, completeness_heads=0, single_ablations=False, neuron_ablation=0,
                           path_senders=0, figure_heads=1, rank_by="denoise", selection="top_k", top_k=3)


def zero_head(folder: Path, target: Path, layer: int, head: int) -> Path:
    """A copy of the GPT-2 in ``folder`` whose ``head`` in ``layer`` writes nothing (its W_O rows zero)."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    d_head = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        model.transformer.h[layer].attn.c_proj.weight[head * d_head:(head + 1) * d_head] = 0.0  # (n_heads*d_head, d_model)
    shutil.copytree(folder, target)
    model.save_pretrained(target)
    return target


def negate_logits(folder: Path, target: Path) -> Path:
    """A copy of the GPT-2 in ``folder`` whose final LayerNorm is negated: every logit, so every logit
    difference answer − foil, changes sign (the unembedding has no bias)."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.neg_()  # (d_model,)
        model.transformer.ln_f.bias.neg_()  # (d_model,)
    shutil.copytree(folder, target)
    model.save_pretrained(target)
    return target


def write_attributions(folder: Path, scores: dict[str, list[float]], faithfulness: dict[str, float]) -> None:
    """An attribute-stage method folder: ``attributions.parquet`` and ``per_example.csv`` by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(scores)
    pd.DataFrame({"example_id": ids, "input_ids": [np.arange(len(scores[i])) for i in ids],
                  "tokens": [np.array([f"t{j}" for j in range(len(scores[i]))]) for i in ids], "target_id": 0,
                  "scores": [np.asarray(scores[i], dtype=float) for i in ids]}).to_parquet(folder / "attributions.parquet")
    pd.DataFrame({"example_id": ids, "task": "ioi", "comprehensiveness": [faithfulness[i] for i in ids],
                  "sufficiency": 0.5}).to_csv(folder / "per_example.csv", index=False)


FP_SCORES = {"ioi-0": [0.1, 0.9, 0.3, 0.5], "ioi-1": [2.0, 1.0, 3.0], "ioi-2": [0.0, 1.0, 4.0, 2.0, 3.0]}
FP_COMPREHENSIVENESS = {"ioi-0": 0.2, "ioi-1": 0.4, "ioi-2": 0.6}


@pytest.fixture(scope="session")
def study_roots(tiny_folder, data_root, tmp_path_factory):  # noqa: F811
    """``models/``, ``circuits/`` and ``attribute/`` roots holding both tiny models' results."""
    from interpipe.circuits import run_circuits

    root = tmp_path_factory.mktemp("quant_interp")
    shutil.copytree(tiny_folder, root / "models" / "tiny")
    zero_head(tiny_folder, root / "models" / "tiny-zeroed", *ZEROED)
    negate_logits(tiny_folder, root / "models" / "tiny-negated")
    settings = circuit_settings()
    for name in MODELS:
        out = root / "circuits" / name
        run_circuits(settings, root / "models" / name, data_root, out, model_name=name)
        (out / ".hydra").mkdir()
        (out / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"circuits": dataclasses.asdict(settings)}))
    write_attributions(root / "attribute" / "tiny" / "saliency", FP_SCORES, FP_COMPREHENSIVENESS)
    reversed_scores = {k: [-x for x in v] for k, v in FP_SCORES.items()}  # every ranking reversed: Spearman -1
    write_attributions(root / "attribute" / "tiny-zeroed" / "saliency", reversed_scores,
                       {k: v + 0.1 for k, v in FP_COMPREHENSIVENESS.items()})
    return root
