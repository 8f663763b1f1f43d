"""What the quantization study needs to know about a model, read off :mod:`interpipe.models.arch`.

The one architecture description (:func:`interpipe.models.arch.describe_architecture`) gives the
module paths of every norm -> linears pair and of the output projections; this module turns them
into quantization *targets* (each linear, its kind and the TransformerLens name of its input) and
migration *pairs* (with the module whose shortcut a post-LN pair must restore), and handles GPT-2's
transposed ``Conv1D``. No code here looks at a model's name.

Migration (shifting/scaling a norm's output channels and compensating in the next linears, see
:mod:`interpipe.quant.migrate`) depends on the block style and on the norm:

- **pre-LN** ``h = x + Attn(N1(x))`` (GPT-2, Llama, Qwen2, OPT) and **parallel**
  ``out = x + Attn(N1(x)) + MLP(N2(x))`` (GPT-NeoX): each norm's output feeds only its linears,
  so the fold is exact inside the unchanged Hugging Face class.
- **post-LN** ``h = LN(x + Attn(x))`` (BERT, MiniLM): the norm output also feeds the *next*
  residual connection, so the shortcut undoes the fold explicitly, ``residual = h_tilde * s + z``:
  the "gamma migration" of Outlier Suppression (Wei et al. 2022). The migrated model then needs a
  :class:`~interpipe.quant.recipe.ShortcutRestore` (a forward pre-hook on the module holding the
  residual add), which :class:`~interpipe.quant.migrate.Migration` installs and holds.
- **RMSNorm** (Llama, Qwen2) has no bias, so it cannot output ``(x - z) / s``; it takes the scale
  only and the shift ``delta = z / s`` becomes an *input shift* of each linear reading it
  (``Migration.input_shifts``): the quantizer sees ``x / s - delta``, the linear adds ``W diag(s)
  delta = W z`` back to its bias. In full precision the two cancel, so the migrated folder holds
  exactly the FP-equivalent weights and loads with stock ``from_pretrained``.

Activation names follow TransformerLens (``blocks.{L}.hook_attn_in``, ``blocks.{L}.hook_mlp_in``,
``blocks.{L}.attn.hook_z``, ``blocks.{L}.mlp.hook_post``, ``ln_final.hook_normalized``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from interpipe.models.arch import ArchSpec, UnsupportedArchitecture, describe_architecture
from interpipe.settings.quantize import LAYER_KINDS
from interpipe.typing import Float, Tensor

PAIR_KIND = {"qkv": "qkv", "mlp_in": "fc1"}  # ArchSpec pair kind -> quantization layer kind


@dataclass
class Target:
    """One quantizable linear: module path, kind, block and the TransformerLens name of its input."""

    module: str
    kind: str
    block: int
    hook: str


@dataclass
class Pair:
    """A norm and the linears that read its output (a migration pair)."""

    norm: str
    linears: list[str]
    kind: str  # qkv | fc1
    block: int
    hook: str
    shortcut: str | None = None  # post-LN: module whose residual input must be restored


@dataclass
class Arch:
    """What the quantization study needs to know about one model."""

    spec: ArchSpec
    targets: list[Target]
    pairs: list[Pair]
    attn_scale: float  # softmax temperature of the attention scores
    qkv_layout: str  # split (q, k, v modules) | blocks ([q | k | v] rows) | heads (per head [q k v])
    extra: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def style(self) -> str:
        """Block style: pre_ln | post_ln | parallel."""
        return self.spec.block_style

    @property
    def causal(self) -> bool:
        return self.spec.causal

    @property
    def n_heads(self) -> int:
        return self.spec.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.spec.n_kv_heads

    @property
    def d_head(self) -> int:
        return self.spec.d_head

    def target(self, module: str) -> Target:
        return next(t for t in self.targets if t.module == module)


def _hook(kind: str, block: int) -> str:
    return {"qkv": f"blocks.{block}.hook_attn_in", "attn_out": f"blocks.{block}.attn.hook_z",
            "fc1": f"blocks.{block}.hook_mlp_in", "fc2": f"blocks.{block}.mlp.hook_post"}[kind]


def _block_targets(spec: ArchSpec) -> list[Target]:
    out: list[Target] = []
    for b in spec.blocks:
        for kind, modules in (("qkv", b.qkv), ("attn_out", (b.attn_out,)), ("fc1", b.mlp_in), ("fc2", (b.mlp_out,))):
            out += [Target(m, kind, b.index, _hook(kind, b.index)) for m in modules]
    return out


def _head_targets(model: nn.Module, spec: ArchSpec, taken: set[str]) -> list[Target]:
    """Every linear outside the blocks (unembedding, pooler, classifier): kind ``head``."""
    base = spec.embed.split(".", 1)[0] + "." if "." in spec.embed else ""
    out = []
    for name, module in model.named_modules():
        if name in taken or not (isinstance(module, nn.Linear) or is_conv1d(module)):
            continue
        if any(name.startswith(f"{t}.") for t in taken):
            continue
        short = name[len(base):] if base and name.startswith(base) else name
        hook = "ln_final.hook_normalized" if name == spec.unembed and spec.final_norm else f"{short}.hook_in"
        out.append(Target(name, "head", spec.n_layers, hook))
    return out


def _qkv_layout(model: nn.Module, spec: ArchSpec) -> str:
    """How a fused q/k/v projection orders its output rows (GPT-2 ``Conv1D``: blocks, else per head)."""
    if not spec.qkv_fused:
        return "split"
    return "blocks" if is_conv1d(model.get_submodule(spec.blocks[0].qkv[0])) else "heads"


def describe_arch(model: nn.Module) -> Arch:
    """The :class:`Arch` of a Hugging Face model; :class:`UnsupportedArchitecture` names its ``model_type``.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> arch = describe_arch(LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
    ...                      num_key_value_heads=1, intermediate_size=16, vocab_size=16)))
    >>> arch.style, [t.kind for t in arch.targets], arch.pairs[1].linears
    ('pre_ln', ['qkv', 'qkv', 'qkv', 'attn_out', 'fc1', 'fc1', 'fc2', 'head'], ['model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj'])
    """
    spec = describe_architecture(model)
    targets = _block_targets(spec)
    targets += _head_targets(model, spec, {t.module for t in targets})
    pairs = [Pair(p.norm, list(p.linears), PAIR_KIND[p.kind], p.block, _hook(PAIR_KIND[p.kind], p.block), p.shortcut)
             for p in spec.pairs()]
    scaled = bool(getattr(model.config, "scale_attn_weights", True))
    return Arch(spec, targets, pairs, 1 / math.sqrt(spec.d_head) if scaled else 1.0, _qkv_layout(model, spec))


def family_of(model: nn.Module) -> str:
    """The model's family (``gpt2``, ``llama``, ...), or :class:`UnsupportedArchitecture` naming its ``model_type``."""
    return describe_architecture(model).family


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores the weight as ``[in, out]`` (transposed w.r.t. ``nn.Linear``)."""
    return type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> Float[Tensor, "d_out d_in"]:
    """The weight of an ``nn.Linear`` or ``Conv1D`` as ``[out, in]`` (a view, not a copy)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def d_in_of(module: nn.Module) -> int:
    return linear_weight(module).shape[1]


__all__ = ["Arch", "LAYER_KINDS", "Pair", "Target", "UnsupportedArchitecture", "describe_arch", "family_of",
           "get_module", "is_conv1d", "linear_weight", "set_module"]
