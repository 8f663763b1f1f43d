"""Calibration: batches of prepared text, per-channel statistics at every quantized input.

One full-precision pass over the calibration examples records, for each quantized input
(``blocks.{L}.hook_attn_in`` etc., padding tokens excluded): per-channel min/max/absmax, the
first four moments (for std and kurtosis), the energy per channel, per example the per-channel
min/max (from which the static range observers of :mod:`~interpipe.quant.observers` derive the
range of any migrated input without another pass) and which channels are the top-k by absmax
(for the stability of outlier channels across examples), and per token the largest |x| over
channels (the massive activations at the first token and at delimiters).
For the Outlier Suppression+ search it also keeps the raw LayerNorm outputs of every
migration pair, and for GPTQ the Hessian ``2 X^T X / n`` of every quantized input
(:class:`~interpipe.quant.gptq.HessianAccumulator`, float64, non-padding tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from interpipe.quant.arch import Arch, get_module
from interpipe.quant.gptq import HessianAccumulator
from interpipe.quant.observers import example_ranges
from interpipe.typing import Float, Tensor


def as_tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """``[batch * pos, d]`` inputs (OPT flattens its tokens before the MLP) back to ``[batch, pos, d]``."""
    if mask is not None and x.ndim == 2 and x.shape[0] == mask.numel() and mask.shape[1] > 1:
        return x.reshape(*mask.shape, x.shape[-1])  # (batch, pos, d)
    return x


def token_rows(x: Tensor, mask: Tensor) -> Tensor:
    """``x[mask]`` for a per-token tensor ``[batch, pos, d]``; pooled tensors ``[batch, d]`` as they are."""
    x = as_tokens(x, mask)
    if x.ndim == 3 and x.shape[:2] == mask.shape:
        return x[mask.to(x.device)]  # (n_tokens, d)
    return x.reshape(-1, x.shape[-1])


@dataclass
class TextBatch:
    """One padded batch of texts for calibration and end metrics: token ids and the non-padding mask
    (token attribution has its own ``attribution.Batch``, with targets and cue masks; circuits ``PromptBatch``)."""

    input_ids: Tensor  # (batch, pos)
    attention_mask: Tensor  # (batch, pos)

    def to(self, device) -> "TextBatch":
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def mask(self) -> Tensor:
        return self.attention_mask.bool()


def make_batches(tokenizer, texts: list[str], max_length: int, batch_size: int) -> list[TextBatch]:
    """Tokenize ``texts`` (right padding, truncation at ``max_length``) into batches."""
    from interpipe.models.tokens import pad_encode

    return [TextBatch(*pad_encode(tokenizer, texts[start:start + batch_size], "right", max_length))
            for start in range(0, len(texts), batch_size)]


@torch.no_grad()
def run_batches(model: nn.Module, batches: list[TextBatch], device, desc: str | None = None) -> list:
    """Run a full-precision model on every batch; returns the raw outputs (kept on CPU)."""
    outs = []
    for batch in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        batch = batch.to(device)
        outs.append(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask))
    return outs


@dataclass
class ChannelStats:
    """Running per-channel statistics of one activation (float64)."""

    d: int
    top_k: int
    n: int = 0
    n_examples: int = 0
    min: Tensor = None
    max: Tensor = None
    moments: Tensor = None  # (4, d): sums of x, x^2, x^3, x^4
    topk_count: Tensor = None  # (d,): examples where the channel is in the example's top-k by absmax
    top1: list[int] = field(default_factory=list)  # each example's top-1 channel
    ex_min: list[Tensor] = field(default_factory=list)  # per batch (batch, d): each example's channel minima
    ex_max: list[Tensor] = field(default_factory=list)  # per batch (batch, d): each example's channel maxima
    token_absmax: list[Tensor] = field(default_factory=list)  # per batch (batch, pos): max |x| over channels (0 at padding)

    def __post_init__(self) -> None:
        self.min = torch.full((self.d,), float("inf"), dtype=torch.float64)
        self.max = torch.full((self.d,), float("-inf"), dtype=torch.float64)
        self.moments = torch.zeros(4, self.d, dtype=torch.float64)
        self.topk_count = torch.zeros(self.d, dtype=torch.float64)

    def add(self, x: Float[Tensor, "batch *rows d"], mask: Tensor) -> None:  # (batch, pos, d) or pooled (batch, d)
        if x.ndim == 2 or x.shape[:2] != mask.shape:  # a pooled input (batch, d): one row per example
            x = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, rows, d)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            self.token_absmax.append((x.abs().amax(-1) * mask).float().cpu())  # (batch, pos)
        lo, hi = example_ranges(x, mask, per_channel=True)  # (batch, d) each
        self.ex_min.append(lo.double().cpu())
        self.ex_max.append(hi.double().cpu())
        rows = x[mask].double().cpu()  # (n_tokens, d) non-padding tokens only
        self.n += rows.shape[0]
        self.min = torch.minimum(self.min, rows.min(0).values)
        self.max = torch.maximum(self.max, rows.max(0).values)
        sq = rows * rows  # (n_tokens, d) products, cheaper than pow
        self.moments += torch.stack([rows.sum(0), sq.sum(0), (sq * rows).sum(0), (sq * sq).sum(0)])  # (4, d)
        per_example = torch.maximum(-self.ex_min[-1], self.ex_max[-1])  # (batch, d) absmax per example
        k = min(self.top_k, self.d)
        top = per_example.topk(k, dim=-1).indices  # (batch, k)
        self.topk_count += torch.zeros_like(self.topk_count).index_add_(0, top.reshape(-1), torch.ones(top.numel(), dtype=torch.float64))
        self.top1 += top[:, 0].tolist()
        self.n_examples += x.shape[0]

    def example_ranges(self) -> tuple[Tensor, Tensor]:
        """Every calibration example's per-channel minima and maxima, ``(n_examples, d)`` each."""
        return torch.cat(self.ex_min), torch.cat(self.ex_max)

    @property
    def absmax(self) -> Tensor:
        return torch.maximum(self.max.abs(), self.min.abs())

    @property
    def mean(self) -> Tensor:
        return self.moments[0] / self.n

    @property
    def std(self) -> Tensor:
        return (self.moments[1] / self.n - self.mean**2).clamp(min=0).sqrt()

    @property
    def kurtosis(self) -> Tensor:
        """Pearson kurtosis E[(x - mu)^4] / sigma^4 (3 for a Gaussian)."""
        mu = self.mean
        e1, e2, e3, e4 = (self.moments[p] / self.n for p in range(4))
        central4 = e4 - 4 * mu * e3 + 6 * mu**2 * e2 - 3 * mu**4
        return central4 / (self.std**4).clamp(min=1e-30)

    @property
    def energy(self) -> Tensor:
        return self.moments[1]


@dataclass
class Calibration:
    """Statistics at every quantized input and, if asked, the raw inputs of migration pairs."""

    stats: dict[str, ChannelStats]  # by TransformerLens input name
    modules: dict[str, list[str]]  # input name -> the linears reading it
    pair_inputs: dict[str, list[tuple[Tensor, Tensor]]]  # pair hook -> [(x (batch,pos,d), mask)]
    n_examples: int
    n_tokens: int
    batches: list[TextBatch] = field(default_factory=list)  # the calibration batches (token ids for the token statistics)
    hessians: dict = field(default_factory=dict)  # input name -> HessianAccumulator (keep_hessians only)


@torch.no_grad()
def calibrate(model: nn.Module, arch: Arch, batches: list[TextBatch], device, top_k: int = 5,
              keep_pair_inputs: bool = False, keep_hessians: bool = False) -> Calibration:
    """One full-precision pass over ``batches`` recording :class:`ChannelStats` at every input (and, with
    ``keep_hessians``, GPTQ's Hessian of every input)."""
    inputs: dict[str, list[str]] = {}
    for t in arch.targets:
        inputs.setdefault(t.hook, []).append(t.module)
    pair_hooks = {p.hook for p in arch.pairs}
    stats: dict[str, ChannelStats] = {}
    kept: dict[str, list] = {h: [] for h in pair_hooks} if keep_pair_inputs else {}
    hessians = {h: HessianAccumulator() for h in inputs} if keep_hessians else {}
    current = {"mask": None}
    handles = []

    def make_hook(hook_name: str):
        def hook(module, args):
            x = as_tokens(args[0].detach(), current["mask"])  # (batch, pos, d) or pooled (batch, d)
            if hook_name not in stats:
                stats[hook_name] = ChannelStats(d=x.shape[-1], top_k=top_k)
            stats[hook_name].add(x, current["mask"])
            if hook_name in kept:
                kept[hook_name].append((x.cpu(), current["mask"].cpu()))
            if hook_name in hessians:
                hessians[hook_name].add(token_rows(x, current["mask"]))  # (n_tokens, d) non-padding rows
        return hook

    for hook_name, modules in inputs.items():
        handles.append(get_module(model, modules[0]).register_forward_pre_hook(make_hook(hook_name)))
    try:
        for batch in tqdm(batches, desc="calibrate", leave=False):
            batch = batch.to(device)
            current["mask"] = batch.mask
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for h in handles:
            h.remove()
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    return Calibration(stats, inputs, kept, sum(b.input_ids.shape[0] for b in batches), n_tokens, list(batches),
                       hessians)
