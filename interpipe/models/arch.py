"""One description of a loaded Hugging Face transformer for every study.

Studies never branch on a model's name: they ask :func:`describe_architecture` what the model is
(norm kind, block style, positions, head counts, biases, tied unembedding) and where its parts are
(module paths of the norms, the linears each norm feeds, the attention and MLP output
projections, the embeddings and the unembedding), then :meth:`ArchSpec.require` refuses what a
study cannot do *before* any work, naming the ``model_type`` and the missing feature.

Families described: GPT-2, GPT-NeoX (Pythia), Llama (SmolLM2) and Mistral, Qwen2, OPT, BERT
(MiniLM). Anything else raises :class:`UnsupportedArchitecture`.

Block styles::

    pre_ln    h = x + Attn(N1(x));  out = h + MLP(N2(h))            GPT-2, Llama, Qwen2, OPT
    parallel  out = x + Attn(N1(x)) + MLP(N2(x))                     GPT-NeoX (use_parallel_residual)
    post_ln   h = N1(x + Attn(x));  out = N2(h + MLP(h))             BERT, OPT-350m

In ``post_ln`` the norm that feeds block ``i``'s attention is the previous block's output norm
(the embedding norm for block 0); :attr:`BlockModules.attn_norm` names it all the same.

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> spec = describe_architecture(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=8, vocab_size=16)))
>>> spec.family, spec.norm_kind, spec.positions, spec.blocks[1].qkv
('gpt2', 'layernorm', 'learned', ('transformer.h.1.attn.c_attn',))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

NORM_KINDS = ("layernorm", "rmsnorm")
BLOCK_STYLES = ("pre_ln", "post_ln", "parallel")
POSITIONS = ("learned", "rotary")
FEATURES = ("causal", "encoder", "learned_positions", "rotary", "mha", "gqa", "layernorm", "rmsnorm",
            "pre_ln", "post_ln", "parallel", "split_qkv", "fused_qkv", "gated_mlp", "tied_unembed")


class UnsupportedArchitecture(ValueError):
    """The model's family is not described, or a study needs a feature the model lacks."""


@dataclass(frozen=True)
class BlockModules:
    """Module paths inside one block (``model.get_submodule(path)``).

    ``qkv`` is one fused projection (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) or the three
    ``(q, k, v)`` projections; ``mlp_in`` is ``(fc1,)`` or the gated pair ``(gate, up)``.
    """

    index: int
    attn_norm: str  # the norm whose output the attention reads
    mlp_norm: str  # the norm whose output the MLP reads
    qkv: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    out_norm: str | None = None  # post_ln only: the norm after the MLP residual add


@dataclass(frozen=True)
class NormLinearPair:
    """A norm and the linears that read its output (a migration pair for SmoothQuant / OS+).

    ``shortcut`` (post-LN only) is the module whose residual input is the same norm output and must
    be restored after a migration.
    """

    norm: str
    linears: tuple[str, ...]
    kind: str  # "qkv" | "mlp_in"
    block: int
    shortcut: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    """What a loaded model is and where its parts are."""

    model_type: str
    family: str  # gpt2 | gpt_neox | llama | qwen2 | opt | bert
    causal: bool
    norm_kind: str  # layernorm | rmsnorm
    norm_bias: bool
    norm_offset_one: bool  # Gemma-style (1 + w) gain
    norm_eps: float
    block_style: str  # pre_ln | post_ln | parallel
    positions: str  # learned | rotary
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    gated_mlp: bool  # SwiGLU: down(act(gate(x)) * up(x))
    qkv_bias: bool
    attn_out_bias: bool
    mlp_bias: bool
    tied_unembed: bool
    embed: str
    pos_embed: str | None
    final_norm: str | None
    unembed: str | None
    blocks: tuple[BlockModules, ...]

    @property
    def gqa(self) -> bool:
        """Grouped-query attention: fewer key/value heads than query heads."""
        return self.n_kv_heads < self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads that read one key/value head (query head ``h`` reads KV head ``h // group_size``)."""
        return self.n_heads // self.n_kv_heads

    @property
    def qkv_fused(self) -> bool:
        return len(self.blocks[0].qkv) == 1

    def kv_head_of(self, head: int) -> int:
        """The key/value head query head ``head`` reads (HF ``repeat_kv`` order)."""
        return head // self.group_size

    def has(self, feature: str) -> bool:
        """Whether the model has ``feature`` (one of :data:`FEATURES`)."""
        if feature not in FEATURES:
            raise ValueError(f"unknown architecture feature {feature!r}: use one of {FEATURES}")
        return {
            "causal": self.causal, "encoder": not self.causal,
            "learned_positions": self.positions == "learned", "rotary": self.positions == "rotary",
            "mha": not self.gqa, "gqa": self.gqa,
            "layernorm": self.norm_kind == "layernorm", "rmsnorm": self.norm_kind == "rmsnorm",
            "pre_ln": self.block_style == "pre_ln", "post_ln": self.block_style == "post_ln",
            "parallel": self.block_style == "parallel",
            "split_qkv": not self.qkv_fused, "fused_qkv": self.qkv_fused,
            "gated_mlp": self.gated_mlp, "tied_unembed": self.tied_unembed,
        }[feature]

    def require(self, study: str, *, needs: tuple[str, ...] = (), refuses: tuple[str, ...] = ()) -> "ArchSpec":
        """Refuse, before any work, a model that lacks a feature ``study`` needs or has one it cannot handle.

        >>> from transformers import BertConfig, BertModel
        >>> spec = describe_architecture(BertModel(BertConfig(num_hidden_layers=1, hidden_size=8,
        ...                              num_attention_heads=2, intermediate_size=16, vocab_size=16)))
        >>> spec.require("talking_heads", needs=("causal",))  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        UnsupportedArchitecture: the talking_heads study needs a causal model; model_type='bert' ...
        """
        for feature in needs:
            if not self.has(feature):
                raise UnsupportedArchitecture(
                    f"the {study} study needs a {feature.replace('_', ' ')} model; model_type={self.model_type!r} "
                    f"({self.family} family: {self.summary()}) has none. Use a model with that feature.")
        for feature in refuses:
            if self.has(feature):
                raise UnsupportedArchitecture(
                    f"the {study} study does not support {feature.replace('_', ' ')} models yet; "
                    f"model_type={self.model_type!r} ({self.family} family: {self.summary()}) is one.")
        return self

    def pairs(self) -> list[NormLinearPair]:
        """Every norm -> linears pair, block by block (q/k/v first, then the MLP input)."""
        shortcut = self.block_style == "post_ln"
        out: list[NormLinearPair] = []
        for b in self.blocks:
            attn_shortcut = b.attn_out.rsplit(".", 1)[0] if shortcut else None
            mlp_shortcut = b.mlp_out.rsplit(".", 1)[0] if shortcut else None
            out.append(NormLinearPair(b.attn_norm, b.qkv, "qkv", b.index, attn_shortcut))
            out.append(NormLinearPair(b.mlp_norm, b.mlp_in, "mlp_in", b.index, mlp_shortcut))
        return out

    def norms(self) -> list[str]:
        """Every norm module path: per block (attention, MLP, post-LN output), then the final norm."""
        names: list[str] = []
        for b in self.blocks:
            for name in (b.attn_norm, b.mlp_norm, b.out_norm):
                if name and name not in names:
                    names.append(name)
        if self.final_norm and self.final_norm not in names:
            names.append(self.final_norm)
        return names

    def summary(self) -> str:
        attn = f"{self.n_heads} query / {self.n_kv_heads} KV heads" if self.gqa else f"{self.n_heads} heads"
        return (f"{self.norm_kind}, {self.block_style}, {self.positions} positions, {attn}, "
                f"d_model {self.d_model}, {self.n_layers} layers")

    def to_dict(self) -> dict:
        """Flat description (no module paths) for run records and cards."""
        return {"model_type": self.model_type, "family": self.family, "causal": self.causal,
                "norm_kind": self.norm_kind, "norm_bias": self.norm_bias, "block_style": self.block_style,
                "positions": self.positions, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads, "d_model": self.d_model, "d_head": self.d_head,
                "d_mlp": self.d_mlp, "gated_mlp": self.gated_mlp, "qkv_bias": self.qkv_bias,
                "tied_unembed": self.tied_unembed}


def _prefix(model: nn.Module, base: str) -> str:
    """``""`` when ``model`` is the base model itself, else ``"<base>."`` (e.g. ``"transformer."``)."""
    return f"{base}." if hasattr(model, base) else ""


def _tied(model: nn.Module, embed: str, unembed: str | None) -> bool:
    if unembed is None:
        return False
    try:
        return model.get_submodule(unembed).weight is model.get_submodule(embed).weight
    except AttributeError:
        return False


def _gpt2(model: nn.Module, cfg) -> dict:
    p = _prefix(model, "transformer")
    blocks = tuple(BlockModules(i, f"{p}h.{i}.ln_1", f"{p}h.{i}.ln_2", (f"{p}h.{i}.attn.c_attn",),
                                f"{p}h.{i}.attn.c_proj", (f"{p}h.{i}.mlp.c_fc",), f"{p}h.{i}.mlp.c_proj")
                   for i in range(cfg.n_layer))
    return dict(family="gpt2", causal=True, norm_kind="layernorm", norm_bias=True, norm_eps=cfg.layer_norm_epsilon,
                block_style="pre_ln", positions="learned", n_layers=cfg.n_layer, n_heads=cfg.n_head,
                n_kv_heads=cfg.n_head, d_model=cfg.n_embd, d_head=cfg.n_embd // cfg.n_head,
                d_mlp=cfg.n_inner or 4 * cfg.n_embd, gated_mlp=False, qkv_bias=True, attn_out_bias=True,
                mlp_bias=True, embed=f"{p}wte", pos_embed=f"{p}wpe", final_norm=f"{p}ln_f",
                unembed="lm_head" if hasattr(model, "lm_head") else None, blocks=blocks)


def _gpt_neox(model: nn.Module, cfg) -> dict:
    p = _prefix(model, "gpt_neox")
    layer = lambda i: f"{p}layers.{i}"  # noqa: E731
    blocks = tuple(BlockModules(i, f"{layer(i)}.input_layernorm", f"{layer(i)}.post_attention_layernorm",
                                (f"{layer(i)}.attention.query_key_value",), f"{layer(i)}.attention.dense",
                                (f"{layer(i)}.mlp.dense_h_to_4h",), f"{layer(i)}.mlp.dense_4h_to_h")
                   for i in range(cfg.num_hidden_layers))
    bias = bool(getattr(cfg, "attention_bias", True))
    return dict(family="gpt_neox", causal=True, norm_kind="layernorm", norm_bias=True, norm_eps=cfg.layer_norm_eps,
                block_style="parallel" if cfg.use_parallel_residual else "pre_ln", positions="rotary",
                n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
                n_kv_heads=cfg.num_attention_heads, d_model=cfg.hidden_size,
                d_head=cfg.hidden_size // cfg.num_attention_heads, d_mlp=cfg.intermediate_size, gated_mlp=False,
                qkv_bias=bias, attn_out_bias=bias, mlp_bias=True, embed=f"{p}embed_in", pos_embed=None,
                final_norm=f"{p}final_layer_norm", unembed="embed_out" if hasattr(model, "embed_out") else None,
                blocks=blocks)


def _llama_like(family: str) -> Callable[[nn.Module, object], dict]:
    """Llama, Mistral and Qwen2: RMSNorm, rotary, split q/k/v (GQA), SwiGLU."""

    def build(model: nn.Module, cfg) -> dict:
        p = _prefix(model, "model")
        layer = lambda i: f"{p}layers.{i}"  # noqa: E731
        blocks = tuple(BlockModules(i, f"{layer(i)}.input_layernorm", f"{layer(i)}.post_attention_layernorm",
                                    tuple(f"{layer(i)}.self_attn.{n}_proj" for n in "qkv"), f"{layer(i)}.self_attn.o_proj",
                                    (f"{layer(i)}.mlp.gate_proj", f"{layer(i)}.mlp.up_proj"), f"{layer(i)}.mlp.down_proj")
                       for i in range(cfg.num_hidden_layers))
        n_heads = cfg.num_attention_heads
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        qkv_bias = family == "qwen2" or bool(getattr(cfg, "attention_bias", False))
        out_bias = family != "qwen2" and bool(getattr(cfg, "attention_bias", False))
        return dict(family=family, causal=True, norm_kind="rmsnorm", norm_bias=False, norm_eps=cfg.rms_norm_eps,
                    block_style="pre_ln", positions="rotary", n_layers=cfg.num_hidden_layers, n_heads=n_heads,
                    n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads, d_model=cfg.hidden_size,
                    d_head=d_head, d_mlp=cfg.intermediate_size, gated_mlp=True, qkv_bias=qkv_bias,
                    attn_out_bias=out_bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
                    embed=f"{p}embed_tokens", pos_embed=None, final_norm=f"{p}norm",
                    unembed="lm_head" if hasattr(model, "lm_head") else None, blocks=blocks)

    return build


def _opt(model: nn.Module, cfg) -> dict:
    p = f"{_prefix(model, 'model')}decoder."
    if cfg.word_embed_proj_dim != cfg.hidden_size:
        raise UnsupportedArchitecture(
            f"model_type='opt' with word_embed_proj_dim={cfg.word_embed_proj_dim} != hidden_size={cfg.hidden_size} "
            f"(project_in/project_out, as OPT-350m) is not described; use an OPT model whose embeddings are hidden_size wide")
    layer = lambda i: f"{p}layers.{i}"  # noqa: E731
    pre = bool(cfg.do_layer_norm_before)
    blocks = tuple(BlockModules(i, f"{layer(i)}.self_attn_layer_norm", f"{layer(i)}.final_layer_norm",
                                tuple(f"{layer(i)}.self_attn.{n}_proj" for n in "qkv"), f"{layer(i)}.self_attn.out_proj",
                                (f"{layer(i)}.fc1",), f"{layer(i)}.fc2")
                   for i in range(cfg.num_hidden_layers))
    if not pre:
        raise UnsupportedArchitecture("model_type='opt' with do_layer_norm_before=False (post-LN OPT) is not described; "
                                      "use a pre-LN OPT model (every size except 350m)")
    bias = bool(getattr(cfg, "enable_bias", True))
    final = f"{p}final_layer_norm" if not getattr(cfg, "_remove_final_layer_norm", False) else None
    return dict(family="opt", causal=True, norm_kind="layernorm", norm_bias=bool(getattr(cfg, "layer_norm_elementwise_affine", True)),
                norm_eps=1e-5, block_style="pre_ln", positions="learned", n_layers=cfg.num_hidden_layers,
                n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_attention_heads, d_model=cfg.hidden_size,
                d_head=cfg.hidden_size // cfg.num_attention_heads, d_mlp=cfg.ffn_dim, gated_mlp=False,
                qkv_bias=bias, attn_out_bias=bias, mlp_bias=bias, embed=f"{p}embed_tokens",
                pos_embed=f"{p}embed_positions", final_norm=final,
                unembed="lm_head" if hasattr(model, "lm_head") else None, blocks=blocks)


def _bert(model: nn.Module, cfg) -> dict:
    p = _prefix(model, "bert")
    layer = lambda i: f"{p}encoder.layer.{i}"  # noqa: E731
    blocks = []
    for i in range(cfg.num_hidden_layers):
        prev = f"{p}embeddings.LayerNorm" if i == 0 else f"{layer(i - 1)}.output.LayerNorm"
        blocks.append(BlockModules(i, prev, f"{layer(i)}.attention.output.LayerNorm",
                                   tuple(f"{layer(i)}.attention.self.{n}" for n in ("query", "key", "value")),
                                   f"{layer(i)}.attention.output.dense", (f"{layer(i)}.intermediate.dense",),
                                   f"{layer(i)}.output.dense", out_norm=f"{layer(i)}.output.LayerNorm"))
    return dict(family="bert", causal=False, norm_kind="layernorm", norm_bias=True, norm_eps=cfg.layer_norm_eps,
                block_style="post_ln", positions="learned", n_layers=cfg.num_hidden_layers,
                n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_attention_heads, d_model=cfg.hidden_size,
                d_head=cfg.hidden_size // cfg.num_attention_heads, d_mlp=cfg.intermediate_size, gated_mlp=False,
                qkv_bias=True, attn_out_bias=True, mlp_bias=True, embed=f"{p}embeddings.word_embeddings",
                pos_embed=f"{p}embeddings.position_embeddings", final_norm=None,
                unembed="classifier" if hasattr(model, "classifier") else None, blocks=tuple(blocks))


DESCRIBERS: dict[str, Callable[[nn.Module, object], dict]] = {
    "gpt2": _gpt2, "gpt_neox": _gpt_neox, "llama": _llama_like("llama"), "mistral": _llama_like("llama"),
    "qwen2": _llama_like("qwen2"), "opt": _opt, "bert": _bert,
}
SUPPORTED_MODEL_TYPES = tuple(DESCRIBERS)


def describe_architecture(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` of a Hugging Face model (a bare base model or one with a head).

    Raises :class:`UnsupportedArchitecture` naming the ``model_type`` when its family is not described.
    """
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in DESCRIBERS:
        raise UnsupportedArchitecture(
            f"model_type={model_type!r} ({type(model).__name__}) is not a described architecture: interpipe knows "
            f"{SUPPORTED_MODEL_TYPES}. Add a describer to interpipe/models/arch.py (norms, q/k/v, MLP and "
            f"output projection paths) to run the studies on it.")
    fields = DESCRIBERS[model_type](model, cfg)
    spec = ArchSpec(model_type=model_type, norm_offset_one=False,
                    tied_unembed=_tied(model, fields["embed"], fields["unembed"]), **fields)
    missing = [path for b in spec.blocks[:1] for path in (b.attn_norm, b.mlp_norm, *b.qkv, b.attn_out, *b.mlp_in, b.mlp_out)
               if not _exists(model, path)]
    if missing:
        raise UnsupportedArchitecture(f"model_type={model_type!r} ({type(model).__name__}) lacks the modules "
                                      f"{missing}; its implementation differs from the one interpipe describes")
    return spec


def _exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


__all__ = ["ArchSpec", "BLOCK_STYLES", "BlockModules", "FEATURES", "NORM_KINDS", "NormLinearPair", "POSITIONS",
           "SUPPORTED_MODEL_TYPES", "UnsupportedArchitecture", "describe_architecture"]
