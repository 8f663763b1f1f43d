"""A rotated pair: QuaRot's rotation without quantization leaves every head-level comparison where it was.

The rotated FP model is the quantize stage's own QuaRot export at W16A16 (16 bits: nothing quantized) of a
tiny Llama of the architecture matrix (the rotation needs RMSNorm and rotary positions; the toy GPT-2 is
refused), built over the circuits tests' word-level vocabulary so that IOI's clean and corrupted prompts
have one length. Its residual stream is ``h Q`` and its down projections read ``z H`` inside their hook, yet heads
and MLP layers keep their identity: compared with the FP model, the study gives what the FP model gives
against itself (per-head effect correlation 1, the FP circuit's faithfulness, the logit difference fully
retained, every head class kept), and the pair is marked as rotated. The MLP neurons (the down projection's
input as the model computes it) are in the original basis; the residual stream is not.
"""

from __future__ import annotations

import dataclasses
import shutil

import pandas as pd
import pytest
import torch
import yaml

from interpipe.io import write_json
from tests.circuits.conftest import tiny_folder  # noqa: F401 - its word-level tokenizer
from tests.quant.test_rotate import _plant_norms

TINY = dict(calib_samples=4, eval_samples=4, probe_samples=4, max_length=24, save_migrated=False, calib_seeds=[0])


def _circuit_settings():
    from interpipe.settings.circuits import CircuitSettings

    return CircuitSettings(tasks=["ioi"], n_prompts=8, grids=["z"], min_logit_gap=-1e9, reference_prompts=8,
                           random_circuits=2, completeness_heads=0, single_ablations=False, neuron_ablation=0,
                           path_senders=0, figure_heads=1, rank_by="denoise", selection="top_k", top_k=2,
                           on_mismatch="skip")


@pytest.fixture(scope="module")
def rotated_roots(tiny_folder, data_root, tmp_path_factory):  # noqa: F811
    """``models/`` (the tiny Llama with planted norm gains, and its QuaRot W16A16 export) and ``circuits/``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interpipe.circuits import run_circuits
    from interpipe.quant import QuantSettings, run_quantize
    from tests.architectures import save_tiny_folder

    root = tmp_path_factory.mktemp("rotated_pair")
    fp = save_tiny_folder("llama", root / "models" / "llama", AutoTokenizer.from_pretrained(tiny_folder))
    model = AutoModelForCausalLM.from_pretrained(fp).eval()
    _plant_norms(model)  # gains far from 1: folding them into the readers is part of what is checked
    model.save_pretrained(fp)
    # w8a8 beside the export: a grid of W16A16 alone has no quantized series for the stage's frontier figure
    s = QuantSettings(methods=["quarot"], bits=["w16a16", "w8a8"], export=["quarot-w16a16"], **TINY)
    study = run_quantize(s, fp, data_root, root / "quantize", export_root=root / "exports")
    shutil.move(root / "exports" / f"{study.model}-quarot-w16a16", root / "models" / "llama-quarot-w16a16")
    settings = _circuit_settings()
    for name in ("llama", "llama-quarot-w16a16"):
        out = root / "circuits" / name
        run_circuits(settings, root / "models" / name, data_root, out, model_name=name)
        (out / ".hydra").mkdir()
        (out / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"circuits": dataclasses.asdict(settings)}))
    return root


@pytest.fixture(scope="module")
def both_pairs(rotated_roots, data_root, tmp_path_factory):
    """The study on (FP, FP) and (FP, rotated FP); ``pairs.csv`` indexed by the quantized model."""
    from interpipe.quant_interp import QuantInterpSettings, run_quant_interp

    out = tmp_path_factory.mktemp("rotated_study")
    settings = QuantInterpSettings(pairs=[{"fp": "llama", "quantized": q, "attribution": False}
                                          for q in ("llama", "llama-quarot-w16a16")],
                                   circuits_root=str(rotated_roots / "circuits"), attribute_root=str(rotated_roots),
                                   random_circuits=2, bootstrap_resamples=200, attribution=False,
                                   min_pairwise_accuracy=-1.0, min_class_heads=2)  # the random model: solved planted
    run_quant_interp(settings, out, rotated_roots / "models", data_root)
    return pd.read_csv(out / "pairs.csv", keep_default_na=False).set_index("model"), out


def test_the_export_is_rotated_and_unquantized(rotated_roots):
    from interpipe.quant.recipe import Recipe

    recipe = Recipe.load(rotated_roots / "models" / "llama-quarot-w16a16")
    assert recipe.method == "quarot" and recipe.bits == "w16a16"
    assert "rotation.residual" in recipe.tensors and any(k.endswith(".online_hadamard") for k in recipe.tensors)


def test_head_level_comparison_is_the_unrotated_one(both_pairs, rotated_roots):
    pairs, out = both_pairs
    same, rotated = pairs.loc["llama"], pairs.loc["llama-quarot-w16a16"]
    assert float(same["effect_correlation"]) == pytest.approx(1.0, abs=1e-9)
    assert float(rotated["effect_correlation"]) == pytest.approx(1.0, abs=1e-4)
    for key in ("clean_logit_diff_retained", "fp_circuit_faithfulness", "quantized_pairwise_accuracy",
                "circuit_jaccard"):
        assert float(rotated[key]) == pytest.approx(float(same[key]), abs=1e-3), key
    effects = pd.read_csv(out / "head_effects.csv").set_index("model")
    rot = effects.loc["llama-quarot-w16a16"]
    torch.testing.assert_close(torch.tensor(rot["effect_quantized"].to_numpy()),
                               torch.tensor(rot["effect_fp"].to_numpy()), atol=1e-4, rtol=1e-3)
    # the circuits runs' per-head readings: attention scores, direct effect through the (rotated) unembedding,
    # copy scores and the IOI class of every head (the random model names none, so head_classes.csv is empty)
    heads = [pd.read_csv(rotated_roots / "circuits" / m / f"{m}-ioi" / "ioi_heads.csv", keep_default_na=False)
             for m in ("llama", "llama-quarot-w16a16")]
    for column in ("attn_end_io", "attn_end_s", "attn_s2_s1", "direct_effect", "copy_score", "negative_copy_score"):
        torch.testing.assert_close(torch.tensor(heads[1][column].to_numpy()), torch.tensor(heads[0][column].to_numpy()),
                                   atol=1e-5, rtol=1e-4, msg=column)
    assert heads[1]["class"].tolist() == heads[0]["class"].tolist()


def test_rotated_pair_says_what_compares(both_pairs):
    pairs, _ = both_pairs
    assert pairs.loc["llama", "basis"] == ""
    note = pairs.loc["llama-quarot-w16a16", "basis"]
    assert note.startswith("rotated residual basis") and "one to one" in note


def test_mlp_neurons_stay_in_the_original_basis_the_stream_does_not(rotated_roots, data_root):
    """The down projection's input as the model computes it equals the FP model's; only its quantizer (inside
    the hook) reads ``z H``. The residual stream between blocks is ``h Q``."""
    from interpipe.models import load_model
    from interpipe.models.arch import describe_architecture
    from interpipe.quant.recipe import Recipe

    fp = load_model(rotated_roots / "models" / "llama").model.eval()
    rotated = load_model(rotated_roots / "models" / "llama-quarot-w16a16").model.eval()
    q = Recipe.load(rotated_roots / "models" / "llama-quarot-w16a16").tensors["rotation.residual"].double()
    path = describe_architecture(fp).blocks[0].mlp_out
    seen = {}

    def capture(name):
        def hook(module, args):
            seen[name] = args[0].detach().double()  # (batch, pos, d_mlp) the neurons
        return hook

    fp.get_submodule(path).register_forward_pre_hook(capture("fp"), prepend=True)
    rotated.get_submodule(path).register_forward_pre_hook(capture("rotated"), prepend=True)  # before the Hadamard
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        fp_out = fp(ids, output_hidden_states=True)
        rot_out = rotated(ids, output_hidden_states=True)
    torch.testing.assert_close(seen["rotated"], seen["fp"], atol=1e-5, rtol=1e-4)
    h_fp, h_rot = fp_out.hidden_states[1].double(), rot_out.hidden_states[1].double()  # (1, pos, d_model)
    assert (h_rot - h_fp).abs().max() > 1e-2  # the stream is in another basis
    torch.testing.assert_close(h_rot @ q.T, h_fp, atol=1e-5, rtol=1e-4)  # ... Q's: rotated back with Q^T
    torch.testing.assert_close(rot_out.logits, fp_out.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reduction, refused", [("l1", True), ("default", False)])
def test_basis_dependent_attribution_is_refused_in_a_rotated_pair(tmp_path, reduction, refused):
    """Saliency reduced by the L1 norm over the embedding dimensions changes under ``Q``: its drift across a rotated
    pair is undefined with the reason; the L2 default (and an unrotated pair) keeps it."""
    from interpipe.quant_interp.inputs import Pair, Roots
    from interpipe.quant_interp.study import PairResult, _add_drift
    from interpipe.settings.quant_interp import QuantInterpSettings
    from tests.quant_interp.conftest import FP_COMPREHENSIVENESS, FP_SCORES, write_attributions

    for model in ("fp", "fp-quarot-w6a6", "fp-rtn-w6a6"):
        write_attributions(tmp_path / model / "saliency", FP_SCORES, FP_COMPREHENSIVENESS)
        write_json(tmp_path / model / "saliency" / "attribution.json",  # the settings the method's run records
                   {"method": "saliency", "info": {"settings": {"gradient_reduction": reduction}}})
    roots = Roots(tmp_path, tmp_path, tmp_path, tmp_path)
    settings = QuantInterpSettings(bootstrap_resamples=200)
    for quantized, rotated in (("fp-quarot-w6a6", True), ("fp-rtn-w6a6", False)):
        pair = Pair("fp", quantized)
        result = PairResult(pair, {}, {}, None, None, {})
        _add_drift(result, pair, roots, settings)
        if rotated and refused:
            assert "saliency" not in result.drift
            assert "not comparable across a rotated pair" in result.undefined["saliency/token_rank_correlation"]
        else:
            assert result.drift["saliency"]["token_rank_correlation"].estimate == pytest.approx(1.0)
            assert not result.undefined
