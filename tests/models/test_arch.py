"""The architecture description on every family, against each model's own config and modules."""

from __future__ import annotations

import pytest
import torch

from interpipe.models.arch import UnsupportedArchitecture, describe_architecture
from interpipe.models.loading import load_model
from tests.architectures import CAUSAL_FAMILIES, FAMILIES, UNSUPPORTED

EXPECTED = {  # family: (norm kind, block style, positions, n_kv_heads, fused qkv, gated MLP)
    "gpt2": ("layernorm", "pre_ln", "learned", 4, True, False),
    "gpt_neox": ("layernorm", "parallel", "rotary", 4, True, False),
    "llama": ("rmsnorm", "pre_ln", "rotary", 2, False, True),
    "qwen2": ("rmsnorm", "pre_ln", "rotary", 2, False, True),
    "opt": ("layernorm", "pre_ln", "learned", 4, False, False),
    "bert": ("layernorm", "post_ln", "learned", 4, False, False),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_description_matches_the_model(arch_folders, family):
    model = load_model(arch_folders[family]).model
    spec = describe_architecture(model)
    norm, style, positions, n_kv, fused, gated = EXPECTED[family]
    assert (spec.norm_kind, spec.block_style, spec.positions) == (norm, style, positions)
    assert (spec.n_kv_heads, spec.qkv_fused, spec.gated_mlp) == (n_kv, fused, gated)
    assert spec.n_layers == 2 and spec.n_heads == 4 and spec.d_model == 32 and spec.d_head == 8
    assert spec.causal == (family in CAUSAL_FAMILIES)
    # every path names a real module, and the norms are the kind the spec says
    for block in spec.blocks:
        for path in (block.attn_norm, block.mlp_norm, *block.qkv, block.attn_out, *block.mlp_in, block.mlp_out):
            model.get_submodule(path)
    for name in spec.norms():
        module = model.get_submodule(name)
        kind = "layernorm" if isinstance(module, torch.nn.LayerNorm) else "rmsnorm"
        assert kind == spec.norm_kind, name
        assert (getattr(module, "bias", None) is not None) == spec.norm_bias, name
    # the q/k/v output width is what the head counts say
    width = sum(model.get_submodule(p).weight.shape[0 if not fused or family != "gpt2" else 1] for p in spec.blocks[0].qkv)
    assert width == (spec.n_heads + 2 * spec.n_kv_heads) * spec.d_head
    if spec.unembed and family != "bert":
        assert spec.tied_unembed == (model.get_submodule(spec.unembed).weight is model.get_submodule(spec.embed).weight)
    assert spec.tied_unembed == (family in ("llama", "qwen2", "opt", "gpt2"))


def test_qwen2_has_qkv_bias_and_gqa_groups(arch_folders):
    spec = describe_architecture(load_model(arch_folders["qwen2"]).model)
    assert spec.qkv_bias and not spec.attn_out_bias and spec.gqa and spec.group_size == 2
    assert [spec.kv_head_of(h) for h in range(4)] == [0, 0, 1, 1]


@pytest.mark.parametrize("family", UNSUPPORTED)
def test_unsupported_family_is_named(arch_folders, family):
    model = load_model(arch_folders[family]).model
    with pytest.raises(UnsupportedArchitecture, match=f"model_type='{family}'"):
        describe_architecture(model)


def test_require_names_the_missing_feature(arch_folders):
    spec = describe_architecture(load_model(arch_folders["llama"]).model)
    with pytest.raises(UnsupportedArchitecture, match="learned positions.*model_type='llama'"):
        spec.require("demo", needs=("learned_positions",))
    assert spec.require("demo", needs=("rmsnorm", "gqa", "causal")) is spec
