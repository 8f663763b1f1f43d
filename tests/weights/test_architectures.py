"""The architecture matrix of the weight-level studies: every causal family, and fast refusals.

Known answers, computed from the HF model itself (hidden states and the output projection's input),
not from the bridge the study uses: with the attention-side biases zeroed,

- OV: at position 0 a head attends only to itself, so its output ``z_0 W_O[h]`` is
  ``norm(x_0) W_V[kv(h)] W_O[h]`` — the folded OV matrix of query head ``h`` (centred for LayerNorm);
- QK: the pre-softmax score of a position with itself is ``norm(x) QK[h] norm(x)^T / sqrt(d_head)``
  under rotary positions too (relative offset 0: the rotations cancel).
"""

from __future__ import annotations

import copy

import pytest
import torch

from interpipe.components import Component
from interpipe.models.arch import UnsupportedArchitecture, describe_architecture
from tests.architectures import CAUSAL_FAMILIES, UNSUPPORTED

TEXTS = ["The bag has a cup , a key and a box . I took out the cup and the box and kept the",
         "The bag has a pen and a hat . I took out the pen and kept the"]


@pytest.fixture(scope="module")
def loaded_archs(arch_folders):
    from interpipe.models import load_model

    return {family: load_model(arch_folders[family]) for family in CAUSAL_FAMILIES}


def zero_attention_biases(model):
    """A copy without norm biases and q/k/v biases (the known answers then have no constant terms)."""
    model, spec = copy.deepcopy(model), describe_architecture(model)
    with torch.no_grad():
        for block in spec.blocks:
            for path in (block.attn_norm, *block.qkv):
                bias = getattr(model.get_submodule(path), "bias", None)
                if bias is not None:
                    bias.zero_()
    return model


def normalised(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """Norm input -> normalised, before the gain: (x - mean) / std for LayerNorm, x / rms for RMSNorm."""
    x = x - x.mean(-1, keepdim=True) if kind == "layernorm" else x
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


@torch.no_grad()
def hf_reference(model, spec, ids, layer: int):
    """Normalised attention input (pos, d_model), per-head input of the output projection (pos, head,
    d_head) and the raw per-head W_O (head, d_head, d_model) of ``layer``, from the HF model alone."""
    from interpipe.weights.common import out_projection

    seen = {}
    module = model.get_submodule(spec.blocks[layer].attn_out)
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("z", args[0][0]))
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]  # (pos, d_model)
    handle.remove()
    weight, conv1d = out_projection(model, spec, layer)
    w_o = weight if conv1d else weight.T  # (head * d_head, d_model)
    z = seen["z"].view(ids.shape[1], spec.n_heads, spec.d_head)  # (pos, head, d_head)
    return normalised(hidden, spec.norm_kind, spec.norm_eps), z, w_o.reshape(spec.n_heads, spec.d_head, -1)


@torch.no_grad()
def offset0_scores(model, spec, bridge, ids, layer: int) -> torch.Tensor:
    """Score (head, pos) of each position with itself: from the HF q/k projections' outputs where q/k
    are split (query head h reads KV head h // group), else from the bridge's pre-softmax scores."""
    if spec.qkv_fused:
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == f"blocks.{layer}.attn.hook_attn_scores")
        return cache[f"blocks.{layer}.attn.hook_attn_scores"][0].diagonal(dim1=-2, dim2=-1)  # (head, pos)
    out = {}
    hooks = [model.get_submodule(path).register_forward_hook(lambda m, a, o, key=key: out.setdefault(key, o[0]))
             for key, path in zip("qk", spec.blocks[layer].qkv[:2])]
    model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    q = out["q"].view(ids.shape[1], spec.n_heads, spec.d_head)  # (pos, head, d_head)
    k = out["k"].view(ids.shape[1], spec.n_kv_heads, spec.d_head).repeat_interleave(spec.group_size, dim=1)
    return torch.einsum("phd,phd->hp", q, k) / spec.d_head ** 0.5


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_folded_circuits_per_query_head_match_hf(family, loaded_archs, arch_folders):
    from interpipe.weights.common import boot_bridge, folded_head_weights
    from interpipe.weights.composition import factored_norm, head_components, matrix_composition

    tok, model = loaded_archs[family].tokenizer, zero_attention_biases(loaded_archs[family].model)
    spec = describe_architecture(model)
    bridge = boot_bridge(model, tok, arch_folders[family])
    w = folded_head_weights(bridge, model, spec)
    assert w.W_K.shape == (spec.n_layers, spec.n_heads, spec.d_model, spec.d_head)  # expanded under GQA
    assert head_components(w, 3).ov_s.shape == (spec.n_layers, spec.n_heads, 3)
    ids = tok(TEXTS[:1], return_tensors="pt")["input_ids"]
    layer = spec.n_layers - 1
    x, z, w_o = hf_reference(model, spec, ids, layer)
    scores = offset0_scores(model, spec, bridge, ids, layer)  # (head, pos)
    centre = (lambda t: t - t.mean(-1, keepdim=True)) if spec.norm_kind == "layernorm" else (lambda t: t)  # noqa: E731
    for h in range(spec.n_heads):
        ov, qk = w.W_V[layer, h] @ w.W_O[layer, h], w.W_Q[layer, h] @ w.W_K[layer, h].T  # (d_model, d_model)
        torch.testing.assert_close(x[0] @ ov, centre(z[0, h] @ w_o[h]), rtol=1e-4, atol=1e-4)
        diag = torch.einsum("pd,de,pe->p", x, qk, x) / spec.d_head ** 0.5  # (pos,) offset-0 scores
        torch.testing.assert_close(diag, scores[h], rtol=1e-4, atol=1e-4)
        dense = torch.linalg.matrix_norm(ov @ qk) / (torch.linalg.matrix_norm(ov) * torch.linalg.matrix_norm(qk))
        factored = matrix_composition(w.W_V[layer, h], w.W_O[layer, h], w.W_Q[layer, h], w.W_K[layer, h].T)
        torch.testing.assert_close(factored, dense, rtol=1e-4, atol=1e-6)
        assert float(factored_norm(w.W_V[layer, h], w.W_O[layer, h])) == pytest.approx(float(torch.linalg.matrix_norm(ov)), rel=1e-4)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_weight_edit_equals_activation_edit_and_reloads(family, loaded_archs, arch_folders, data_root, tmp_path):
    from transformers import AutoModelForCausalLM

    from interpipe.data import load_task
    from interpipe.models import describe, save_model_folder
    from interpipe.weights.common import boot_bridge, folded_head_weights
    from interpipe.weights.composition import head_components
    from interpipe.weights.laundry import LaundryBatch, hf_final_logits, run_laundry
    from interpipe.weights.talking_heads import apply_weight_edit, edit_vectors, scale_component_hook

    loaded = loaded_archs[family]
    spec = describe_architecture(loaded.model)
    bridge = boot_bridge(loaded.model, loaded.tokenizer, arch_folders[family])
    w = folded_head_weights(bridge, loaded.model, spec)
    comps = head_components(w, 2)
    batch = LaundryBatch(loaded.tokenizer, loaded.model, list(load_task(data_root, "laundry_list", "test"))[:4])
    layer, head = 0, spec.n_heads - 1  # the last query head of the last KV group
    read, write = edit_vectors(w, comps, Component.head(layer, head), 0)
    act, _ = run_laundry(loaded.model, spec, batch, 4, edits=[(layer, scale_component_hook(2.0, head, read, write))])
    edited = copy.deepcopy(loaded.model)
    apply_weight_edit(edited, spec, comps, Component.head(layer, head), 0, 2.0)
    ours = hf_final_logits(edited, batch, 4)
    torch.testing.assert_close(ours, act, rtol=1e-4, atol=1e-4)
    assert float((ours - hf_final_logits(loaded.model, batch, 4)).abs().max()) > 1e-4
    save_model_folder(tmp_path / "edited", edited, loaded.tokenizer, describe(edited, "edited", "test", "causal_lm"))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "edited").eval()
    torch.testing.assert_close(hf_final_logits(stock, batch, 4), ours, rtol=1e-5, atol=1e-5)


LNFREE_FAMILIES = [f for f in CAUSAL_FAMILIES if f != "opt"]  # OPT hard-codes its LayerNorm eps


@pytest.mark.parametrize("family", LNFREE_FAMILIES)
def test_lnfree_folder_loads_stock_and_matches_frozen(family, loaded_archs, arch_folders, tmp_path):
    """Every norm frozen (the attention norm's v scale 1.7x its q/k scale, folded into the value
    weights at saving), saved, reloaded with stock from_pretrained: the same logits, exact DLA."""
    from transformers import AutoModelForCausalLM

    from interpipe.models import describe, save_model_folder
    from interpipe.weights.lnfree.evaluate import dla_exactness
    from interpipe.weights.lnfree.fake_norm import norm_paths, unwrap_to_lnfree
    from tests.weights.test_lnfree import freeze_everything

    loaded = loaded_archs[family]
    spec = describe_architecture(loaded.model)
    model = copy.deepcopy(loaded.model).eval()
    names = norm_paths(spec)
    assert len(names) == 2 * spec.n_layers + 1 and names[-1] == spec.final_norm
    wrapped = freeze_everything(model, loaded.tokenizer, TEXTS, v_factor=1.7)
    ids = loaded.tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        frozen = model(input_ids=ids).logits
    unwrap_to_lnfree(model, wrapped, 1e12)
    save_model_folder(tmp_path / "lnfree", model, loaded.tokenizer, describe(model, "lnfree", "test", "causal_lm"))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "lnfree").eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits, frozen, rtol=1e-4, atol=1e-4)
    dla = dla_exactness(stock, loaded.tokenizer, tmp_path / "lnfree", TEXTS, ["key", "hat"])
    assert dla["dla_sum_max_abs"] < 1e-3 and dla["dla_vs_direct_max_abs"] < 1e-3


def test_frozen_scale_averages_real_tokens_only():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from interpipe.weights.lnfree.fake_norm import FakeNorm, set_token_mask

    norm = LlamaRMSNorm(8, eps=1e-6)
    wrapper = FakeNorm(norm, ema=0.0, kind="rmsnorm")
    x = torch.randn(2, 5, 8)
    x[1, 3:] *= 100  # right padding with a very different scale
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    torch.testing.assert_close(wrapper(x), norm(x))  # unfrozen: the RMSNorm itself
    wrapper.track = True
    set_token_mask({"n": wrapper}, mask)
    wrapper(x)
    rms = (x.pow(2).mean(-1) + 1e-6).sqrt()  # (batch, pos)
    assert float(wrapper.avg) == pytest.approx(float(rms[mask].mean()), rel=1e-5)


def constant_scale_llama(loaded, scale: float = 3.0, first: float = 100.0):
    """The tiny Llama made into a known answer: attention and MLP outputs zeroed, every embedding of
    RMS ``scale`` (token 0, which every text here starts with, ``first`` times that), so each norm's
    input is the embedding itself, its RMS known at every position."""
    model = copy.deepcopy(loaded.model).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.copy_(emb / emb.pow(2).mean(-1, keepdim=True).sqrt() * scale)
        emb[0] *= first
    return model


def test_frozen_only_llama_with_known_constant_scales_is_exact(loaded_archs):
    """Every token's norm input has RMS 3 except position 0's (300): frozen at the ordinary mean with
    position 0 on its own scale, the frozen-only model computes what the original does (known answer:
    the same logits); one shared scale for every position (no special position) does not."""
    from interpipe.weights.lnfree.fake_norm import wrap_norms
    from interpipe.weights.lnfree.recipe import track

    loaded = loaded_archs["llama"]
    model = constant_scale_llama(loaded)
    ids = torch.tensor([[0, 5, 9, 17, 23, 40], [0, 7, 11, 13, 29, 31]])  # (batch, pos), token 0 first
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    results = {}
    for special in ((0,), ()):
        frozen = copy.deepcopy(model)
        wrapped = wrap_norms(frozen, 0.9, split_qkv=True, special=special)
        track(frozen, wrapped, ids, mask, batch_size=2)
        for norm in wrapped.values():
            for use in norm.uses:
                norm.freeze(use)
        assert all(float(n.avg) == pytest.approx(3.0, rel=1e-3) for n in wrapped.values()) or not special
        with torch.no_grad():
            results[special] = frozen(input_ids=ids).logits
    torch.testing.assert_close(results[(0,)], want, rtol=1e-4, atol=1e-4)
    assert (results[()] - want).abs().max() > 1e-2


def test_opt_lnfree_refuses_before_work(loaded_archs):
    from interpipe.weights.lnfree.recipe import lnfree_architecture

    with pytest.raises(UnsupportedArchitecture, match="model_type='opt'.*epsilon"):
        lnfree_architecture(loaded_archs["opt"].model)


@pytest.mark.parametrize("family", ["bert", *UNSUPPORTED])
@pytest.mark.parametrize("study", ["talking_heads", "lnfree", "bigram"])
def test_unsupported_families_fail_fast(family, study, arch_folders, data_root, tmp_path):
    import time

    from interpipe.weights import WeightsSettings, run_weights

    start = time.perf_counter()
    with pytest.raises(UnsupportedArchitecture, match=f"model_type='{family}'"):
        run_weights(WeightsSettings(study=study), arch_folders[family], data_root, tmp_path)
    assert time.perf_counter() - start < 10 and not list(tmp_path.iterdir())
