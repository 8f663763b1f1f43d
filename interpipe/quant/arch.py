"""Architecture adapters: which linears are quantized and which LayerNorm feeds which linear.

Two block styles are supported, and they differ in what migration (shifting/scaling a
LayerNorm's output channels and compensating in the next linear) must do:

- **pre-LN** (GPT-2): ``h = x + Attn(LN1(x))``. The LayerNorm output feeds only the linear,
  so folding ``(LN(x) - z) / s`` into LN's weight/bias and ``W diag(s)``, ``b + W z`` into the
  linear is exact inside the unchanged Hugging Face class.
- **post-LN** (BERT, MiniLM): ``h = LN(x + Attn(x))``. The LayerNorm output also feeds the
  *next* residual connection, so after the fold the shortcut must undo it explicitly:
  ``residual = h_tilde * s + z``. This is the "gamma migration" of Outlier Suppression
  (Wei et al. 2022): the shortcut stays in full precision, only the linear's input is quantized.
  The migrated model then needs :func:`install_shortcut` (a forward pre-hook on
  ``BertSelfOutput``/``BertOutput``), not just the vanilla class.

Activation names follow TransformerLens (``blocks.{L}.hook_attn_in``, ``blocks.{L}.hook_mlp_in``,
``blocks.{L}.attn.hook_z``, ``blocks.{L}.mlp.hook_post``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from interpipe.typing import Float, Tensor

LAYER_KINDS = ("qkv", "attn_out", "fc1", "fc2", "head")
SUPPORTED = ("gpt2", "bert")


@dataclass
class Target:
    """One quantizable linear: module path, kind, block and the TransformerLens name of its input."""

    module: str
    kind: str
    block: int
    hook: str


@dataclass
class Pair:
    """A LayerNorm and the linears that read its output (a migration pair)."""

    norm: str
    linears: list[str]
    kind: str  # qkv | fc1
    block: int
    hook: str
    shortcut: str | None = None  # post-LN: module whose residual input must be restored


@dataclass
class Arch:
    """What the quantization study needs to know about one model."""

    family: str  # gpt2 | bert
    style: str  # pre_ln | post_ln
    targets: list[Target]
    pairs: list[Pair]
    n_heads: int
    causal: bool
    attn_scale: float
    extra: dict = field(default_factory=dict)

    def target(self, module: str) -> Target:
        return next(t for t in self.targets if t.module == module)


def family_of(model: nn.Module) -> str:
    """``gpt2`` or ``bert``, or a ``ValueError`` naming the supported architectures."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in SUPPORTED:
        return model_type
    raise ValueError(f"architecture {type(model).__name__} (model_type={model_type!r}) has no known "
                     f"LayerNorm->linear pairs; the quantization study supports {SUPPORTED} "
                     f"(add an adapter in interpipe/quant/arch.py)")


def _prefix(model: nn.Module, attr: str) -> str:
    for name, _ in model.named_children():
        if name == attr:
            return ""
    for name, child in model.named_children():
        if any(n == attr for n, _ in child.named_children()):
            return f"{name}."
    raise ValueError(f"cannot find the {attr!r} submodule in {type(model).__name__}")


def describe_arch(model: nn.Module) -> Arch:
    """Build the :class:`Arch` of a GPT-2 or BERT Hugging Face model."""
    family = family_of(model)
    cfg = model.config
    if family == "gpt2":
        p = _prefix(model, "h")
        targets, pairs = [], []
        for i in range(cfg.n_layer):
            b = f"{p}h.{i}"
            targets += [Target(f"{b}.attn.c_attn", "qkv", i, f"blocks.{i}.hook_attn_in"),
                        Target(f"{b}.attn.c_proj", "attn_out", i, f"blocks.{i}.attn.hook_z"),
                        Target(f"{b}.mlp.c_fc", "fc1", i, f"blocks.{i}.hook_mlp_in"),
                        Target(f"{b}.mlp.c_proj", "fc2", i, f"blocks.{i}.mlp.hook_post")]
            pairs += [Pair(f"{b}.ln_1", [f"{b}.attn.c_attn"], "qkv", i, f"blocks.{i}.hook_attn_in"),
                      Pair(f"{b}.ln_2", [f"{b}.mlp.c_fc"], "fc1", i, f"blocks.{i}.hook_mlp_in")]
        if hasattr(model, "lm_head"):
            targets.append(Target("lm_head", "head", cfg.n_layer, "ln_final.hook_normalized"))
        head_dim = cfg.n_embd // cfg.n_head
        scale = 1 / math.sqrt(head_dim) if cfg.scale_attn_weights else 1.0
        return Arch("gpt2", "pre_ln", targets, pairs, cfg.n_head, causal=True, attn_scale=scale)
    p = _prefix(model, "encoder")
    targets, pairs = [], []
    for i in range(cfg.num_hidden_layers):
        b = f"{p}encoder.layer.{i}"
        qkv = [f"{b}.attention.self.{n}" for n in ("query", "key", "value")]
        targets += [Target(m, "qkv", i, f"blocks.{i}.hook_attn_in") for m in qkv]
        targets += [Target(f"{b}.attention.output.dense", "attn_out", i, f"blocks.{i}.attn.hook_z"),
                    Target(f"{b}.intermediate.dense", "fc1", i, f"blocks.{i}.hook_mlp_in"),
                    Target(f"{b}.output.dense", "fc2", i, f"blocks.{i}.mlp.hook_post")]
        prev_norm = f"{p}embeddings.LayerNorm" if i == 0 else f"{p}encoder.layer.{i - 1}.output.LayerNorm"
        pairs += [Pair(prev_norm, qkv, "qkv", i, f"blocks.{i}.hook_attn_in", shortcut=f"{b}.attention.output"),
                  Pair(f"{b}.attention.output.LayerNorm", [f"{b}.intermediate.dense"], "fc1", i,
                       f"blocks.{i}.hook_mlp_in", shortcut=f"{b}.output")]
    n = cfg.num_hidden_layers
    if hasattr(model, "classifier"):
        base = model.get_submodule(p.rstrip(".")) if p else model
        if getattr(base, "pooler", None) is not None:
            targets.append(Target(f"{p}pooler.dense", "head", n, "pooler.hook_in"))
        targets.append(Target("classifier", "head", n, "classifier.hook_in"))
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return Arch("bert", "post_ln", targets, pairs, cfg.num_attention_heads, causal=False,
                attn_scale=1 / math.sqrt(head_dim))


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


# --- post-LN shortcut restore (gamma migration) -------------------------------------------------

def _shortcut_hook(module: nn.Module, args: tuple, kwargs: dict):
    scale, shift = module._interpipe_shortcut  # (d_model,), (d_model,)
    if "input_tensor" in kwargs:
        kwargs = {**kwargs, "input_tensor": kwargs["input_tensor"] * scale.to(kwargs["input_tensor"]) + shift.to(kwargs["input_tensor"])}
        return args, kwargs
    hidden, residual, *rest = args
    return (hidden, residual * scale.to(residual) + shift.to(residual), *rest), kwargs


def install_shortcut(module: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """Make ``module`` (``BertSelfOutput``/``BertOutput``) restore its residual input.

    Its ``input_tensor`` (the migrated LayerNorm output ``(h - z) / s``) becomes ``h`` again
    before the residual add; calling it twice composes correctly (scales multiply).
    """
    if hasattr(module, "_interpipe_shortcut"):
        old_scale, old_shift = module._interpipe_shortcut
        # restore(x) = old(new(x)) where new(x) = x * scale + shift
        module._interpipe_shortcut = (scale * old_scale, shift * old_scale + old_shift)
        return
    module._interpipe_shortcut = (scale.detach().clone(), shift.detach().clone())
    module.register_forward_pre_hook(_shortcut_hook, with_kwargs=True)


def shortcuts_of(model: nn.Module) -> dict[str, Tensor]:
    """Every installed shortcut as flat tensors ``{"<module>.scale": ..., "<module>.shift": ...}``."""
    out: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if hasattr(module, "_interpipe_shortcut"):
            scale, shift = module._interpipe_shortcut
            out[f"{name}.scale"], out[f"{name}.shift"] = scale.contiguous(), shift.contiguous()
    return out
