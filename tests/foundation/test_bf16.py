"""The studies on the toy model loaded in bfloat16 on the CPU, as ``dtype=bfloat16`` runs them on a GPU.

Each study (evaluate, circuits, attribute, quantize, talking_heads, bigram) runs twice on the same tiny
toy, in float32 and in bfloat16 (the library's ``dtype`` argument, which every stage passes from the
root ``dtype`` key; the evaluate stage is also run with ``dtype=bfloat16``), at the smallest settings
that still reach each of its steps. The bfloat16 run must finish, and its numbers must be finite
wherever the float32 run's are and near them where that is meaningful. LN removal fine-tunes the
weights themselves and refuses bfloat16, naming the fix.

Tolerances: bfloat16 keeps 8 significant bits, a relative rounding of at most 2^-9 (0.2 %) per
operation; through the toy's two layers its losses (about 5 nats) and logit differences moved by
about 1e-3. Losses are compared at ``rel=0.01`` (0.05 nats) and logit differences at ``abs=0.02``,
20-50x that drift. Quantities that divide by a difference of nearby numbers (faithfulness normalised
by a logit gap of about 0.01-0.1, quantization deltas, paired differences between methods) are
checked for finiteness only.
"""
from __future__ import annotations

import math

import pytest

from interpipe.attribution import AttributeSettings
from interpipe.circuits import CircuitSettings
from interpipe.quant import QuantSettings
from interpipe.weights import BigramSettings, LNFreeSettings, TalkingHeadsSettings, WeightsSettings

DTYPES = ("float32", "bfloat16")
LOSS = dict(rel=0.01)  # of ~5 nats; bf16 rounding through two layers moved the toy's losses by ~1e-3
LOGIT_DIFF = dict(abs=0.02)  # logits; the drift seen is ~1e-3

CIRCUITS = CircuitSettings(tasks=["ioi"], n_prompts=8, grids=["resid_pre", "z", "pattern"], min_logit_gap=-1e9,
                           reference_prompts=8, random_circuits=2, completeness_heads=1, neuron_ablation=2,
                           path_senders=1, figure_heads=1, copy_heads=2, inhibition_senders=1, inhibition_prompts=2,
                           selection="top_k", top_k=2,
                           # not the edge circuits: on this untrained model (min_logit_gap forces "solved") the
                           # full and empty edge sets' logit differences tie in bfloat16's rounding on some
                           # bootstrap draws, so a normalised edge faithfulness has no interval there
                           edge_tasks=[])
ATTRIBUTE = AttributeSettings(causal_tasks=["ioi"], n_examples=4, ig_steps=4, ig_max_steps=16, ratios=[0.5],
                              n_heatmaps=1, operators=[], layerwise=True)
QUANTIZE = QuantSettings(bits=["w8a8"], calib_samples=4, eval_samples=4, probe_samples=4, osplus_steps=3,
                         osplus_samples=2, calib_seeds=[0], save_migrated=False, export=["osplus-w8a8"])
WEIGHTS = WeightsSettings(
    batch_size=16,
    talking_heads=TalkingHeadsSettings(n_components=2, inhibition_components=1, n_inhibition_prompts=4,
                                       edit_candidates=1, edit_scales=[0.0, 1.0], select_lengths=[5, 6], n_select=4,
                                       test_lengths=[2, 6], n_test_per_length=2),
    bigram=BigramSettings(steps=2, batch_size=4, max_eval_texts=8),
    lnfree=LNFreeSettings(start_step=1, gap_mlp=1, gap_qk=1, gap_v=1, gap_special=1, extra_steps=1, batch_size=4,
                          max_eval_texts=8))


def _finite_where_fp32_is(fp: dict, bf: dict) -> None:
    """Every number the float32 run reports finite is reported, and finite, by the bfloat16 run."""
    keys = [k for k, v in fp.items() if isinstance(v, float) and math.isfinite(v)]
    assert keys
    bad = {k: bf.get(k) for k in keys if not (isinstance(bf.get(k), (int, float)) and math.isfinite(bf[k]))}
    assert not bad, bad


def test_evaluate(tiny_toy_folder, data_root, tmp_path):
    """The library in both dtypes, and the stage with the option users give it (``dtype=bfloat16``)."""
    import json

    from interpipe.models.evaluate import evaluate_model
    from tests.conftest import run_module

    runs = {d: evaluate_model(tiny_toy_folder, data_root, dtype=d) for d in DTYPES}
    fp, bf = runs["float32"], runs["bfloat16"]
    _finite_where_fp32_is(fp, bf)
    for key in (k for k in fp if k.endswith("/loss")):
        assert bf[key] == pytest.approx(fp[key], **LOSS), key
    for key in (k for k in fp if k.endswith("/logit_diff")):
        assert bf[key] == pytest.approx(fp[key], **LOGIT_DIFF), key
    proc = run_module("stages.evaluate", "model=toy", "device=cpu", "dtype=bfloat16", f"paths.data={data_root}",
                      f"paths.models={tiny_toy_folder.parent}", f"hydra.run.dir={tmp_path}/stage", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = json.loads((tmp_path / "stage" / "metrics.json").read_text())
    assert {k: stage[k] for k in bf} == pytest.approx(bf, rel=1e-6)  # the stage ran the bfloat16 model


def test_circuits(tiny_toy_folder, data_root, tmp_path):
    from interpipe.circuits import run_circuits

    runs = {d: run_circuits(CIRCUITS, tiny_toy_folder, data_root, tmp_path / d, model_name="toy", dtype=d)
            for d in DTYPES}
    fp, bf = runs["float32"], runs["bfloat16"]
    _finite_where_fp32_is(fp, bf)
    for key in ("ioi/clean_logit_diff", "ioi/logit_gap"):
        assert bf[key] == pytest.approx(fp[key], **LOGIT_DIFF), key
    assert (tmp_path / "bfloat16" / "toy-ioi" / "effects.parquet").exists()


def test_attribute(tiny_toy_folder, data_root, tmp_path):
    """Every method's token scores in bfloat16 rank the tokens as in float32 (Spearman >= 0.9; seen
    >= 0.997) and move by at most 25 % of the example's largest score: the causal target is the answer
    minus the foil logit, a difference that cancels most of bfloat16's ~3 significant digits (seen 15 %,
    grad x input; 3 % with the plain answer target)."""
    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    from interpipe.attribution.study import run_attribute

    runs = {d: run_attribute(ATTRIBUTE, tiny_toy_folder, data_root, tmp_path / d, dtype=d) for d in DTYPES}
    _finite_where_fp32_is(runs["float32"], runs["bfloat16"])
    for method in ATTRIBUTE.methods:
        if method == "random":
            continue
        fp, bf = (pd.read_parquet(tmp_path / d / method / "attributions.parquet") for d in DTYPES)
        for a, b in zip(fp["scores"], bf["scores"]):
            a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
            assert spearmanr(a, b).statistic >= 0.9, method
            assert np.abs(a - b).max() <= 0.25 * np.abs(a).max(), method


def test_quantize(tiny_toy_folder, data_root, tmp_path):
    """Quantized in bfloat16, every setting measures what it does in float32; a migration is exact up to
    the rounding of the migrated bfloat16 weights (relative output change <= 0.02; seen 0.007). The
    exported folder, loaded in bfloat16 (its recipe's float32 ranges meeting bfloat16 activations),
    scores as the float32 export does."""
    from interpipe.models.evaluate import evaluate_model
    from interpipe.quant import run_quantize

    runs = {d: run_quantize(QUANTIZE, tiny_toy_folder, data_root, tmp_path / d, dtype=d) for d in DTYPES}
    _finite_where_fp32_is(runs["float32"].metrics, runs["bfloat16"].metrics)
    fp = {r.name: r.metrics for r in runs["float32"].settings}
    for r in runs["bfloat16"].settings:
        for key in ("fp_loss", "loss"):
            assert r.metrics[key] == pytest.approx(fp[r.name][key], **LOSS), (r.name, key)
        assert r.metrics.get("equiv_rel_diff", 0.0) <= 0.02, r.name
    exported = {d: evaluate_model(tmp_path / d / "models" / "toy-osplus-w8a8", data_root, tasks=["ioi"], dtype=d)
                for d in DTYPES}
    assert exported["bfloat16"]["ioi/loss"] == pytest.approx(exported["float32"]["ioi/loss"], **LOSS)


@pytest.mark.parametrize("study", ["talking_heads", "bigram"])
def test_weights(study, tiny_toy_folder, data_root, tmp_path):
    import dataclasses

    from interpipe.weights import run_weights

    settings = dataclasses.replace(WEIGHTS, study=study)
    runs = {d: run_weights(settings, tiny_toy_folder, data_root, tmp_path / d, checkpoint_dir=tmp_path / d / "ckpt",
                           dtype=d) for d in DTYPES}
    fp, bf = runs["float32"], runs["bfloat16"]
    _finite_where_fp32_is(fp, bf)
    if study == "talking_heads":
        assert bf["top_channel_score"] == pytest.approx(fp["top_channel_score"], abs=0.02)  # from float32 weights
        assert bf["edit_max_logit_gap"] < 0.05  # weight edit = activation edit up to bf16 logits (seen 0.005)
    else:
        for key in ("loss_full", "loss_subnetwork", "loss_bigram_model"):
            assert bf[key] == pytest.approx(fp[key], **LOSS), key


def test_lnfree_refuses_bfloat16_before_any_work(tiny_toy_folder, data_root, tmp_path):
    """LN removal fine-tunes the weights themselves, which bfloat16 cannot hold to an optimiser's steps."""
    import dataclasses

    from interpipe.weights import run_weights

    settings = dataclasses.replace(WEIGHTS, study="lnfree")
    with pytest.raises(ValueError, match="use dtype=float32 for lnfree"):
        run_weights(settings, tiny_toy_folder, data_root, tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                    dtype="bfloat16")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()
