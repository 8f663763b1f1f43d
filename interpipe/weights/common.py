"""Plumbing shared by the weight-level studies: architecture, per-head weights, hooks, batches.

Every study asks :func:`interpipe.models.arch.describe_architecture` what the model is (norm kind,
head counts, module paths) and refuses unsupported families before any work
(:func:`architecture`). Per-head attention weights come from TransformerLens's
``TransformerBridge`` (the same wrapper the circuit study uses), which knows each family's q/k/v
layout (fused GPT-2 / GPT-NeoX, split Llama / Qwen2 / OPT). Forwards on data run the plain HF model
with hooks on the modules the :class:`ArchSpec` names (:func:`hooked`, :func:`z_hook`,
:func:`final_position_logits`, which unembeds only each prompt's final position).

Norm folding (Elhage et al. 2021; TransformerLens's ``fold_ln`` + ``center_writing_weights``):

- **Gain.** The attention norm's gain ``g`` is multiplied into the reading weights
  (``W_Q``, ``W_K``, ``W_V`` rows), for LayerNorm and RMSNorm alike.
- **Centring, LayerNorm only.** LayerNorm's output is mean-free, so reading weights are centred over
  ``d_model``; every reader of the residual stream starts with a LayerNorm that removes the mean, so
  writing weights (``W_O``) are centred too. RMSNorm subtracts no mean: nothing is centred for
  RMSNorm models (the all-ones direction is a real direction of their residual stream).
- **Grouped-query attention.** Query head ``h`` reads key/value head ``kv_head_of(h) = h // group``
  (HF ``repeat_kv`` order); ``W_K`` and ``W_V`` are expanded to one matrix per *query* head, so
  every circuit has ``n_heads`` entries per layer.

Value biases only add a constant (attention rows sum to 1), i.e. they fold into ``b_O`` and leave
the OV matrices unchanged; query/key biases do not enter the bilinear QK form.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from interpipe.models.arch import ArchSpec, describe_architecture
from interpipe.models.tokens import context_length, encode_prompts
from interpipe.typing import Float, Tensor


def architecture(model, study: str, needs: tuple[str, ...] = ("causal",), refuses: tuple[str, ...] = ()) -> ArchSpec:
    """The model's :class:`ArchSpec`, refusing (before any work) what ``study`` cannot handle.

    Raises :class:`interpipe.models.arch.UnsupportedArchitecture` naming the ``model_type``.
    """
    return describe_architecture(model).require(study, needs=needs, refuses=refuses)


def boot_bridge(model, tokenizer, folder: str | Path, copy: bool = True):
    """Wrap an HF causal LM in a ``TransformerBridge``.

    TransformerLens 4.3 replaces the HF model's submodules by bridge wrappers in place (and its
    split q/k/v views then break ``save_pretrained``), so by default a deep copy is wrapped and
    ``model`` stays a plain HF model.
    """
    import copy as copy_module

    from transformer_lens.model_bridge import TransformerBridge

    hf_model = copy_module.deepcopy(model) if copy else model
    return TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer)


def norm_gain(model, spec: ArchSpec, path: str) -> Float[Tensor, "d_model"]:
    """The effective gain of the norm at ``path`` (``1 + w`` for Gemma-style norms; ones without affine)."""
    weight = getattr(model.get_submodule(path), "weight", None)
    if weight is None:
        return torch.ones(spec.d_model)
    gain = weight.detach().float().cpu()
    return gain + 1.0 if spec.norm_offset_one else gain


@dataclass
class HeadWeights:
    """Norm-folded per-head weights of every layer (TransformerLens layout), one entry per query head.

    ``W_Q``, ``W_K``, ``W_V``: (layer, head, d_model, d_head); ``W_O``: (layer, head, d_head, d_model).
    ``OV = W_V @ W_O`` and ``QK = W_Q @ W_K^T`` act on row vectors (``x @ OV``). With GQA, ``W_K`` and
    ``W_V`` of query head ``h`` are those of its key/value head (repeated within a group).
    """

    W_Q: Float[Tensor, "layer head d_model d_head"]
    W_K: Float[Tensor, "layer head d_model d_head"]
    W_V: Float[Tensor, "layer head d_model d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]


@torch.no_grad()
def folded_head_weights(bridge, model, spec: ArchSpec | None = None) -> HeadWeights:
    """Per-head weights with the attention norm's gain folded in (centred for LayerNorm only).

    Args:
        bridge: a ``TransformerBridge`` wrapping (a copy of) ``model``.
        model: the plain HF model (its norm gains are read at the :class:`ArchSpec` paths).
        spec: ``describe_architecture(model)`` (computed when omitted).
    """
    spec = spec or describe_architecture(model)
    centre = spec.norm_kind == "layernorm"
    kv = torch.tensor([spec.kv_head_of(h) for h in range(spec.n_heads)])  # (head,) query head -> KV head
    qs, ks, vs, os_ = [], [], [], []
    for block, modules in zip(bridge.blocks, spec.blocks):
        gain = norm_gain(model, spec, modules.attn_norm)  # (d_model,)
        reads = []
        for w, heads in ((block.attn.W_Q, None), (block.attn.W_K, kv), (block.attn.W_V, kv)):
            w = w.detach().float().cpu()  # (head or kv_head, d_model, d_head)
            w = (w if heads is None else w[heads]) * gain[None, :, None]  # (head, d_model, d_head)
            reads.append(w - w.mean(dim=1, keepdim=True) if centre else w)  # LN input is mean-free
        w_o = block.attn.W_O.detach().float().cpu()  # (head, d_head, d_model)
        qs.append(reads[0]), ks.append(reads[1]), vs.append(reads[2])
        os_.append(w_o - w_o.mean(dim=-1, keepdim=True) if centre else w_o)  # readers' LNs drop the mean
    return HeadWeights(*(torch.stack(t) for t in (qs, ks, vs, os_)))  # small: analysed on the CPU


def out_projection(model, spec: ArchSpec, layer: int) -> tuple[torch.nn.Parameter, bool]:
    """The attention output projection weight of ``layer`` (at ``spec.blocks[layer].attn_out``) and
    whether it is stored ``(d_in, d_out)`` (GPT-2 ``Conv1D``) rather than ``(d_out, d_in)`` (``nn.Linear``)."""
    module = model.get_submodule(spec.blocks[layer].attn_out)
    return module.weight, not isinstance(module, torch.nn.Linear)


def block_linears(spec: ArchSpec) -> list[str]:
    """Module paths of every attention and MLP linear of every block (q/k/v, out, MLP in, MLP out)."""
    return [path for b in spec.blocks for path in (*b.qkv, b.attn_out, *b.mlp_in, b.mlp_out)]


def encode_texts(tokenizer, texts: list[str], model) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (batch, pos) and attention mask for whole texts (BOS added by the tokenizer)."""
    ids, mask, _ = encode_prompts(tokenizer, texts, context_length(model))
    return ids, mask


def token_losses(logits: Float[Tensor, "batch pos d_vocab"], ids: torch.Tensor,
                 mask: torch.Tensor) -> Float[Tensor, "n_tokens"]:
    """Next-token cross-entropy of every real (non-pad) predicted position, flattened."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return nll[mask[:, 1:].bool()]


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class StopForward(Exception):
    """Raised by a hook to end a forward pass once what it reads has been seen."""


@contextlib.contextmanager
def hooked(model, pre: dict | None = None, post: dict | None = None):
    """Forward pre-hooks (``pre``) and forward hooks (``post``), by module path, for the ``with`` body."""
    handles = [model.get_submodule(path).register_forward_pre_hook(fn) for path, fn in (pre or {}).items()]
    handles += [model.get_submodule(path).register_forward_hook(fn) for path, fn in (post or {}).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def attention_implementation(model, name: str):
    """Run the ``with`` body with HF attention ``name`` (``"eager"`` returns attention weights)."""
    previous = model.config._attn_implementation
    if previous == name:
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def attention_module(spec: ArchSpec, layer: int) -> str:
    """Path of ``layer``'s attention module (the parent of its output projection)."""
    return spec.blocks[layer].attn_out.rsplit(".", 1)[0]


def z_hook(spec: ArchSpec, edit):
    """A forward pre-hook on the output projection applying ``edit(z) -> z`` to its input, the per-head
    ``z`` (batch, pos, head, d_head) that the projection reads concatenated (head-major)."""
    def hook(module, args):
        z = args[0].unflatten(-1, (spec.n_heads, spec.d_head))  # (batch, pos, head, d_head)
        return (edit(z).flatten(-2), *args[1:])
    return hook


def unembed_path(model, spec: ArchSpec) -> str:
    """Path of the unembedding module: the :class:`ArchSpec`'s, else the model's output embeddings."""
    if spec.unembed is not None:
        return spec.unembed
    head = model.get_output_embeddings()
    return next(path for path, module in model.named_modules() if module is head)


def final_position_logits(model, spec: ArchSpec, ids: torch.Tensor, last: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (batch, d_vocab) at each row's position ``last`` of right-padded ``ids``: the positions
    after the longest row's last are cut (causal: they change nothing before) and only the ``last``
    rows reach the unembedding."""
    width, rows = int(last.max()) + 1, torch.arange(len(last))
    gather = lambda module, args: (args[0][rows, last.to(args[0].device)][:, None], *args[1:])  # noqa: E731
    device = model_device(model)
    with hooked(model, pre={unembed_path(model, spec): gather}):
        out = model(input_ids=ids[:, :width].to(device),
                    attention_mask=None if mask is None else mask[:, :width].to(device))
    return out.logits[:, 0]
