"""Exported quantized model folders: the recipe round-trips, and the loader (HF or TransformerBridge)
reproduces the in-memory fake-quantized model (:class:`~interpipe.quant.layers.QuantLinear`)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from interpipe.quant.fake import ActSpec, WeightSpec
from interpipe.quant.recipe import ActQuantizer, BrokenRecipe, Recipe

W6 = WeightSpec(6, symmetric=False, granularity="per_channel")  # the paper grid at W6A6
A6 = ActSpec(6, symmetric=False, granularity="per_tensor_static")
IDS = torch.tensor([[5, 17, 40, 3, 22, 9, 31, 12], [8, 2, 19, 27, 44, 6, 13, 30]])


def _tiny(family: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                        tie_word_embeddings=True)).eval()


def _quantized_in_memory(model, shifts: bool):
    """Wrap every target linear in a QuantLinear with hand-set ranges (and OS+-style input shifts)."""
    from interpipe.quant.arch import describe_arch, get_module
    from interpipe.quant.layers import TokenMask, wrap_layers

    targets = [t for t in describe_arch(model).targets if t.kind != "head"]  # the study's default layers
    g = torch.Generator().manual_seed(1)
    input_shifts = {}
    for t in targets:
        if shifts and t.kind in ("qkv", "fc1"):  # behind the RMSNorms
            module = get_module(model, t.module)
            input_shifts[t.module] = 0.3 * torch.randn(module.weight.shape[1], generator=g)
    layers = wrap_layers(model, targets, W6, A6, TokenMask(), input_shifts=input_shifts)
    for i, layer in enumerate(layers.values()):
        layer.set_range(torch.tensor(-1.5 - 0.1 * i), torch.tensor(2.0 + 0.2 * i))
        layer.set_mode("quant")
    return layers


def _export(tmp_path, family: str, tokenizer, shifts: bool = False):
    """(folder, in-memory quantized logits, FP logits) of a tiny random model exported at W6A6."""
    from interpipe.models import describe
    from interpipe.quant.export import save_quantized

    model = _tiny(family, len(tokenizer))
    with torch.no_grad():
        fp = model(IDS).logits
        layers = _quantized_in_memory(model, shifts)
        reference = model(IDS).logits  # (batch, pos, vocab) QuantLinear's computation
    card = describe(model, "tiny", "test", "causal_lm")
    recipe = Recipe("osplus" if shifts else "rtn", "w6a6", "paper", asdict(W6), asdict(A6), [], "tiny", 0)
    folder = save_quantized(tmp_path / f"tiny-{family}", model, layers, tokenizer, card, recipe, None)
    return folder, reference, fp


def test_recipe_round_trip(tmp_path):
    tensors = {"a.b.x_min": torch.tensor(-1.25), "a.b.x_max": torch.tensor(3.5), "a.b.input_shift": torch.arange(4.0)}
    recipe = Recipe("osplus", "w6a6", "paper", asdict(W6), asdict(A6), ["a.b"], "toy", 2, tensors)
    recipe.save(tmp_path)
    back = Recipe.load(tmp_path)
    assert (back.method, back.bits, back.protocol, back.layers, back.base_model, back.calib_seed) == (
        "osplus", "w6a6", "paper", ["a.b"], "toy", 2)
    assert back.w_spec == W6 and back.a_spec == A6
    assert set(back.tensors) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(back.tensors[key], value)


def test_activation_hook_is_the_grid_and_passes_gradients():
    """Q(x - delta) on the hand-computed 2-bit grid [-1, 2] (scale 1, zero point 1); identity gradient."""
    hook = ActQuantizer(ActSpec(2, symmetric=False), torch.tensor(-1.0), torch.tensor(2.0), torch.tensor([0.5, 0.0]))
    x = torch.tensor([[0.4, 0.6], [3.0, -2.0]], requires_grad=True)
    (out,) = hook(torch.nn.Identity(), (x,))
    assert torch.equal(out, torch.tensor([[0.0, 1.0], [2.0, -1.0]]))  # x - [0.5, 0] rounded, clamped to [-1, 2]
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_exported_gpt2_folder_reproduces_in_memory_logits(tmp_path, arch_tokenizer):
    from transformers import AutoModelForCausalLM

    from interpipe.models import load_model

    folder, reference, fp = _export(tmp_path, "gpt2", arch_tokenizer)
    loaded = load_model(folder)
    with torch.no_grad():
        logits = loaded.model(IDS).logits
        weights_only = AutoModelForCausalLM.from_pretrained(folder).eval()(IDS).logits  # stock HF: no activation quant
    assert (reference - fp).abs().max() > 1e-2  # W6A6 changes the logits, so the check below can fail
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    assert (weights_only - reference).abs().max() > 1e-3  # the activation hooks matter
    assert loaded.card.name == "tiny-gpt2" and loaded.card.extra["quantization"]["bits"] == "w6a6"
    assert loaded.card.extra["base_model"] == "tiny"


def test_exported_gpt2_through_the_bridge(tmp_path, arch_tokenizer):
    """TransformerBridge splits GPT-2's fused c_attn into new q/k/v linears; the block's watcher quantizes them."""
    from interpipe.circuits.bridge import load_bridge
    from interpipe.models import load_model

    folder, reference, _ = _export(tmp_path, "gpt2", arch_tokenizer)
    bridge = load_bridge(folder)
    with torch.no_grad():
        through_bridge = bridge(IDS)
        through_hf = load_model(folder).model(IDS).logits
    hooked = [m for m in bridge.modules() if any(isinstance(h, ActQuantizer) for h in m._forward_pre_hooks.values())]
    assert len(hooked) == 2 * (4 + 3)  # per block: c_attn, c_proj, c_fc, mlp c_proj and the bridge's q, k, v
    torch.testing.assert_close(through_bridge, through_hf, atol=1e-4, rtol=0)
    torch.testing.assert_close(through_bridge, reference, atol=1e-4, rtol=0)


def test_exported_llama_with_input_shifts_loads_the_same_through_hf_and_bridge(tmp_path, arch_tokenizer):
    from interpipe.circuits.bridge import load_bridge
    from interpipe.models import load_model

    folder, reference, fp = _export(tmp_path, "llama", arch_tokenizer, shifts=True)
    assert "model.layers.0.self_attn.q_proj.shift_bias" in Recipe.load(folder).tensors
    with torch.no_grad():
        through_hf = load_model(folder).model(IDS).logits
        through_bridge = load_bridge(folder)(IDS)
    assert (reference - fp).abs().max() > 1e-2
    torch.testing.assert_close(through_hf, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(through_bridge, through_hf, atol=1e-4, rtol=0)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_broken_recipe_tensors_fail_naming_the_file(tmp_path, arch_tokenizer, damage):
    from interpipe.models import load_model

    folder, _, _ = _export(tmp_path, "gpt2", arch_tokenizer)
    path = folder / "quantization.safetensors"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BrokenRecipe, match="quantization.safetensors") as info:
        load_model(folder)
    assert "quantize" in str(info.value) and "export" in str(info.value)  # says how to write it again


def test_unknown_export_name_fails_before_any_model_loads(tmp_path):
    from interpipe.settings.quantize import QuantSettings
    from tests.conftest import run_module

    with pytest.raises(ValueError, match="quantize.export entry 'osplus-w4a4'"):
        QuantSettings(bits=["w8a8", "w6a6"], export=["osplus-w4a4"])
    result = run_module("stages.quantize", "model=toy", "quantize.export=[rtn-w6a6,osplus_typo-w6a6]",
                        f"paths.models={tmp_path}/no-models", f"hydra.run.dir={tmp_path}/out", "logger=none")
    assert result.returncode != 0
    assert "quantize.export entry 'osplus_typo-w6a6'" in result.stderr
    assert "card.json" not in result.stderr  # refused before looking for the model folder


def test_study_export_reproduces_its_end_metrics(tmp_path, data_root):
    """The folder the quantize study exports gives the study's own seed-0 end metrics when loaded."""
    from datasets import load_from_disk
    from transformers import GPT2Config, GPT2LMHeadModel

    from interpipe.models import describe, load_model, save_model_folder
    from interpipe.models.toy import build_tokenizer
    from interpipe.quant import QuantSettings, run_quantize
    from interpipe.quant.metrics import EndMetrics

    corpus = load_from_disk(str(data_root / "corpus"))
    tok = build_tokenizer(list(corpus["train"]["text"]) + list(corpus["validation"]["text"]))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4))
    base = save_model_folder(tmp_path / "models" / "tiny", model, tok, describe(model, "tiny", "test", "causal_lm"))
    s = QuantSettings(methods=["rtn", "osplus"], bits=["w6a6"], calib_samples=4, eval_samples=4, probe_samples=4,
                      osplus_steps=3, calib_seeds=[0, 1], export=["osplus-w6a6", "rtn-w6a6"])
    study = run_quantize(s, base, data_root, tmp_path / "out", export_root=tmp_path / "models")
    end = EndMetrics("causal_lm", tok, data_root, s.eval_samples, s.max_length, s.batch_size, torch.device("cpu"))
    fp = end.measure(load_model(base).model)
    for result in study.settings:
        loaded = load_model(tmp_path / "models" / f"tiny-{result.method}-w6a6")
        again = end.compare(fp, end.measure(loaded.model))
        seed0 = result.seeds[result.seeds.calib_seed == 0].iloc[0]
        for key in ("loss_delta", "ppl_delta", "task_acc_drop", "logit_diff_drop"):
            assert again[key] == pytest.approx(float(seed0[key]), abs=1e-5), (result.method, key)
        assert loaded.card.extra["quantization"]["method"] == result.method
