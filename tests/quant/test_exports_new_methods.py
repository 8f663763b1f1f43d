"""LLM.int8() and QuaRot exports: model folders the loader re-applies, on which circuits and attribute run.

LLM.int8() on the tiny GPT-2 (its fused ``c_attn`` is split by TransformerBridge), QuaRot on the tiny
Llama (the rotation needs RMSNorm and rotary positions: the toy GPT-2 is refused, ``test_rotate.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interpipe.quant import QuantSettings, run_quantize
from interpipe.quant.fake import ActSpec, decomposed_activation, quantize_weight
from interpipe.quant.int8 import act_grid, int8_linear, weight_grid
from interpipe.quant.recipe import ActQuantizer, Recipe
from tests.quant.test_study import toy_folder  # noqa: F401 (fixture)

TINY = dict(calib_samples=4, eval_samples=4, probe_samples=4, max_length=24, save_migrated=False, calib_seeds=[0])


def _ids(tokenizer, data_root) -> torch.Tensor:
    """Two IOI prompts cut to one length: no padding, so the loader's per-example outlier rule is the study's."""
    from interpipe.data import load_task

    rows = load_task(data_root, "ioi", "test")
    ids = [tokenizer(p)["input_ids"] for p in rows["prompt"][:2]]
    n = min(len(i) for i in ids)
    return torch.tensor([i[:n] for i in ids])


def test_decomposed_hook_is_int8_linear_on_dequantized_columns():
    """x_O + Q(x_~O) times Q(W) is the paper's decomposition with the 16-bit part on Q(W)'s columns."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    x[0, 3, 2], x[1, 1, 6] = 9.0, -7.5  # one outlier dimension in each example
    w, b = torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    qw = quantize_weight(w, weight_grid(8))
    hook = ActQuantizer(act_grid(8), None, None, None, threshold=6.0)
    (xq,) = hook(torch.nn.Identity(), (x,))
    expected, dims = int8_linear(x, qw, qw, b, act_grid(8), 6.0, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(F.linear(xq, qw, b), expected, atol=1e-6, rtol=0)
    assert dims[0, 0].nonzero().flatten().tolist() == [2] and dims[1, 0].nonzero().flatten().tolist() == [6]
    assert torch.equal(xq[0, :, 2], x[0, :, 2])  # the outlier column passes unquantized
    assert not torch.equal(xq[0, :, 0], x[0, :, 0])  # the others are on the 8-bit per-token grid
    assert torch.equal(decomposed_activation(x, ActSpec(16), 6.0), x)  # 16 bits: nothing to quantize


def test_online_hadamard_hook_passes_gradients_through_the_rotation():
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / 2**0.5
    hook = ActQuantizer(ActSpec(16), None, None, None, online=h)  # 16 bits: only the rotation
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    (out,) = hook(torch.nn.Identity(), (x,))
    torch.testing.assert_close(out, x.detach() @ h)
    (out * torch.tensor([[1.0, 0.0]])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, 0.0]]) @ h.T)


def _circuits_and_attribute(folder, data_root, out, task: str = "ioi") -> None:
    from interpipe.attribution import AttributeSettings, run_attribute
    from interpipe.circuits import run_circuits
    from interpipe.settings.circuits import CircuitSettings

    circuits = CircuitSettings(tasks=[task], n_prompts=8, grids=["z"], min_logit_gap=-1e9, reference_prompts=8,
                               random_circuits=2, completeness_heads=0, single_ablations=False, neuron_ablation=0,
                               path_senders=0, figure_heads=1, rank_by="denoise", selection="top_k", top_k=2,
                               on_mismatch="skip")
    metrics = run_circuits(circuits, folder, data_root, out / "circuits", model_name=folder.name)
    assert any(k.startswith(f"{task}/") for k in metrics)
    attribute = AttributeSettings(methods=["saliency", "random"], causal_tasks=["ioi"], n_examples=4, ratios=[0.5],
                                  n_heatmaps=1, top_k=2, floor_draws=1)
    summary = run_attribute(attribute, folder, data_root, out / "attribute")
    assert summary["n_examples"] == 4


def test_llmint8_export_loads_and_circuits_run(toy_folder, data_root, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from interpipe.circuits.bridge import load_bridge
    from interpipe.models import load_model

    s = QuantSettings(methods=["llmint8"], bits=["w8a8"], int8_threshold=0.5, export=["llmint8-w8a8"], **TINY)
    run_quantize(s, toy_folder, data_root, tmp_path / "out", export_root=tmp_path / "models")
    folder = tmp_path / "models" / "tiny-llmint8-w8a8"
    recipe = Recipe.load(folder)
    assert recipe.threshold == 0.5 and recipe.method == "llmint8" and recipe.a_spec.granularity == "per_token_dynamic"
    loaded = load_model(folder)
    ids = _ids(loaded.tokenizer, data_root)
    with torch.no_grad():
        logits = loaded.model(ids).logits
        weights_only = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
        through_bridge = load_bridge(folder)(ids)
        fp = load_model(toy_folder).model(ids).logits
    assert (logits - weights_only).abs().max() > 1e-4  # the decomposed activation hooks act
    assert (logits - fp).abs().max() > 1e-4
    torch.testing.assert_close(through_bridge, logits, atol=1e-4, rtol=0)  # c_attn split: the watcher's hooks
    _circuits_and_attribute(folder, data_root, tmp_path)


def test_quarot_export_reproduces_the_study_and_circuits_run(arch_folders, data_root, tmp_path):
    from interpipe.circuits.bridge import load_bridge
    from interpipe.models import load_model
    from interpipe.quant.metrics import EndMetrics

    s = QuantSettings(methods=["quarot"], bits=["w6a6"], export=["quarot-w6a6"], **TINY)
    study = run_quantize(s, arch_folders["llama"], data_root, tmp_path / "out", export_root=tmp_path / "models")
    folder = tmp_path / "models" / f"{study.model}-quarot-w6a6"
    recipe = Recipe.load(folder)
    assert recipe.rotation["seed"] == 0 and "rotated basis" in recipe.rotation["basis"]
    assert any(k.endswith(".online_hadamard") for k in recipe.tensors) and "rotation.residual" in recipe.tensors
    loaded = load_model(folder)
    assert loaded.card.extra["quantization"]["rotation"]["seed"] == 0
    end = EndMetrics("causal_lm", loaded.tokenizer, data_root, s.eval_samples, s.max_length, s.batch_size,
                     torch.device("cpu"))
    again = end.compare(end.measure(load_model(arch_folders["llama"]).model), end.measure(loaded.model))
    seed0 = study.settings[0].seeds.iloc[0]
    for key in ("loss_delta", "task_acc_drop", "logit_diff_drop"):
        assert again[key] == pytest.approx(float(seed0[key]), abs=1e-4), key
    ids = _ids(loaded.tokenizer, data_root)
    with torch.no_grad():
        torch.testing.assert_close(load_bridge(folder)(ids), loaded.model(ids).logits, atol=1e-4, rtol=0)
    # colored_objects: the tiny BPE gives IOI's clean and corrupted prompts different lengths (tests/circuits)
    _circuits_and_attribute(folder, data_root, tmp_path, task="colored_objects")
