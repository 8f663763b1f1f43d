"""Attribution methods: NormXLogit (Abbasi, Modarres, Pilehvar, EMNLP 2025) and its baselines.

``NormXLogit(x_i) = ‖x_i⁰‖₂ × LogAt(x_i)``: the L2 norm of token ``i``'s layer-0 vector
(``norm_source``: HF ``hidden_states[0]``, the embedding-layer output, as the official code;
or the raw word embedding) times LogAt, the target's logit obtained by putting token ``i``'s
final-layer state through the model's own head. All positions come out of one forward pass:
for a causal LM LogAt is simply ``logits[b, i, target]`` (the LM head already runs at every
position); for a classifier the head runs on every token state as if it were the pooled one.
``norm`` and ``logat`` are the two factors alone (the paper's ablations).

With a contrastive target (causal LMs, ``causal_target=contrast``: ``batch.foil_ids``) every
method attributes ``logit(answer) − logit(foil)`` instead of the answer's logit: LogAt becomes
the difference of the two rows of the head (the official notebooks compute the foil's LogAt
too), the gradient methods differentiate the difference (:func:`relative_to_foil`).

Gradient baselines on the word embeddings, for the target's logit at the scored position
(``gradient_reduction=l1`` reduces all three with the L1 norm over d_model, as the paper's code):

- ``saliency``: ``‖∂y/∂e_i‖₂`` (Captum ``Saliency`` reduced by the L2 norm over d_model);
- ``grad_x_input``: ``Σ_d e_id · ∂y/∂e_id`` (Captum ``InputXGradient`` summed over d_model);
- ``integrated_gradients``: Sundararajan et al. 2017, summed over d_model; the baseline replaces
  every non-special token's embedding (zero, pad or mask). By default an adaptive composite
  Gauss-Legendre rule adds steps until completeness holds within ``ig_tolerance``
  (:mod:`interpipe.attribution.integrated`); Captum's fixed quadratures stay available. Every
  call records each example's completeness gap and the steps it used.

``attention``: last layer, head-averaged, the scored position's row. ``attention_rollout``:
Abnar & Zuidema 2020 (``0.5·A + 0.5·I``, rows renormalised, multiplied over layers).
``random``: seeded uniform noise, the floor every method must beat.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from interpipe.attribution.inputs import Batch
from interpipe.attribution.integrated import integrate_adaptive, integrate_fixed
from interpipe.attribution.model import ScoredModel, eager_attention, input_gradients_only, relative_to_foil
from interpipe.attribution.result import Attribution
from interpipe.settings.attribute import METHODS, AttributeSettings
from interpipe.typing import Float, Int, Tensor

# scores, targets, layer scores (or None), per-example diagnostics (or None)
Scores = tuple[Float[Tensor, "batch pos"], Int[Tensor, "batch"], "Tensor | None", "dict | None"]


def quadrature(method: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of the integral approximations on [0, 1], as Captum names them.

    Gauss-Legendre and the left/right/middle Riemann sums equal Captum's. The trapezoid uses
    the exact weights ``1/(n-1)`` (halved at the ends, summing to 1); Captum's uses ``1/n``
    with halved ends, which sums to ``(n-1)/n`` and breaks completeness by that factor.

    >>> a, w = quadrature("riemann_trapezoid", 3); [round(x, 2) for x in a], [round(x, 2) for x in w]
    ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
    """
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return [float(a) for a in 0.5 * (1 + nodes)], [float(w) for w in 0.5 * weights]
    if steps < 2 and method == "riemann_trapezoid":
        raise ValueError("riemann_trapezoid needs ig_steps >= 2")
    if method == "riemann_trapezoid":
        alphas = [float(a) for a in np.linspace(0, 1, steps)]
        weights = [1 / (steps - 1)] * steps
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return [(i + offset) / steps for i in range(steps)], [1 / steps] * steps


def resolve_targets(sm: ScoredModel, batch: Batch) -> Int[Tensor, "batch"]:
    """The requested targets, with ``-1`` (classifier: predicted class) filled by one forward pass."""
    targets = batch.target_ids
    sm.check_targets(targets)
    if (targets < 0).any():
        with torch.no_grad():
            logits, _ = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids)
        targets = torch.where(targets < 0, logits.argmax(-1), targets)
    return targets


def input_gradients(sm: ScoredModel, batch: Batch, targets: Int[Tensor, "batch"],
                    internal_batch_size: int) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos d_model"]]:
    """``(∇_e y, e)`` at the input for every example, ``internal_batch_size`` examples per backward.

    ``y`` is the target's logit at the scored position, minus the foil's under a contrastive
    target (the engine of saliency and gradient × input).
    """
    embeds = sm.embed(batch.input_ids).detach()  # (batch, pos, d_model)
    grads = []
    with input_gradients_only(sm.model):
        for start in range(0, len(batch), internal_batch_size):
            sl = slice(start, start + internal_batch_size)
            x = embeds[sl].clone().requires_grad_(True)
            logits, _ = sm.forward(batch.attention_mask[sl], batch.score_pos[sl], inputs_embeds=x)
            logits = relative_to_foil(logits, batch.foil_ids[sl])  # (chunk, n_out)
            grads.append(torch.autograd.grad(logits.gather(1, targets[sl, None]).sum(), x)[0])
    return torch.cat(grads), embeds


def ig_baseline(sm: ScoredModel, batch: Batch, kind: str, tokenizer=None,
                keep_first: bool = False) -> Float[Tensor, "batch pos d_model"]:
    """Integrated-gradients baseline: non-special tokens replaced (zero / pad / mask embedding).

    ``keep_first`` also keeps position 0 at its input embedding: for a model that prepends no
    BOS the first token is its attention sink, and zeroing it makes the path leave the model's
    working regime (IG then credits it 0, as it credits special tokens 0).
    """
    embeds = sm.embed(batch.input_ids).detach()
    if kind == "zero":
        fill = torch.zeros_like(embeds)
    else:
        token = getattr(tokenizer, f"{kind}_token_id", None) if tokenizer is not None else None
        if token is None:
            raise ValueError(f"attribute.ig_baseline={kind!r} but the tokenizer has no {kind} token; use zero")
        fill = sm.embed(torch.full_like(batch.input_ids, token)).detach()
    keep = ~batch.attributable[..., None]  # special tokens and padding keep their own embedding
    if keep_first:
        keep = keep.clone()
        keep[:, 0] = True
    return torch.where(keep, embeds, fill)


def _normxlogit_parts(sm: ScoredModel, batch: Batch, s: AttributeSettings, layerwise: bool):
    """One forward pass: layer-0 norms ``(batch, pos)``, LogAt per layer ``(layer, batch, pos)``, targets.

    Under a contrastive target LogAt is the target's minus the foil's (both rows of the same head).
    """
    targets = batch.target_ids
    sm.check_targets(targets)
    full_head = sm.kind == "causal_lm" and not sm.row_head  # then reuse the LM's own all-position logits
    logits, out = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids,
                             output_hidden_states=True, all_logits=full_head)
    targets = torch.where(targets < 0, logits.argmax(-1), targets)
    hidden = out.hidden_states  # (n_layers + 1) x (batch, pos, d_model)
    x0 = hidden[0] if s.norm_source == "hidden_states0" else sm.embed(batch.input_ids)
    norms = x0.norm(dim=-1)  # (batch, pos)
    layers = range(len(hidden)) if layerwise else [len(hidden) - 1]
    logat = _logat(sm, out, hidden, layers, targets, full_head)  # (layer, batch, pos)
    contrast = batch.foil_ids >= 0  # (batch,)
    if contrast.any():
        foil = _logat(sm, out, hidden, layers, batch.foil_ids.clamp_min(0), full_head)  # (layer, batch, pos)
        logat = logat - torch.where(contrast[None, :, None], foil, torch.zeros_like(foil))
    return norms, logat, targets  # (batch, pos), (layer, batch, pos), (batch,)


def _logat(sm: ScoredModel, out, hidden, layers, ids: Int[Tensor, "batch"], full_head: bool) -> Float[Tensor, "layer batch pos"]:
    """The logit of ``ids`` from every token state of each of ``layers`` through the head."""
    rows = []
    for layer in layers:
        last = layer == len(hidden) - 1
        if last and full_head:
            index = ids[:, None, None].expand(-1, hidden[layer].shape[1], 1)  # (batch, pos, 1)
            rows.append(out.logits.gather(-1, index).squeeze(-1))  # (batch, pos)
        else:
            # HF's last hidden_states entry is already through the final norm (GPT-2, Llama, NeoX)
            rows.append(sm.target_logits(hidden[layer], ids, final=last))  # (batch, pos)
    return torch.stack(rows)


def normxlogit(sm, batch, s, tokenizer=None) -> Scores:
    """‖x_i⁰‖₂ × LogAt(x_i), and the same per layer when ``s.layerwise``."""
    with torch.no_grad():
        norms, logat, targets = _normxlogit_parts(sm, batch, s, s.layerwise)
    layers = norms[None] * logat if s.layerwise else None  # (layer, batch, pos)
    return norms * logat[-1], targets, layers, None


def norm(sm, batch, s, tokenizer=None) -> Scores:
    """‖x_i⁰‖₂ alone (ablation)."""
    with torch.no_grad():
        norms, _, targets = _normxlogit_parts(sm, batch, s, False)
    return norms, targets, None, None


def logat(sm, batch, s, tokenizer=None) -> Scores:
    """LogAt(x_i) alone: the target logit of token i's final state through the head (ablation)."""
    with torch.no_grad():
        _, logits, targets = _normxlogit_parts(sm, batch, s, False)
    return logits[-1], targets, None, None


def _reduce(contrib: Float[Tensor, "batch pos d_model"], s: AttributeSettings, default: str) -> Float[Tensor, "batch pos"]:
    """Reduce over d_model: ``l2`` norm, signed ``sum``, or the L1 norm when ``gradient_reduction=l1``."""
    kind = "l1" if s.gradient_reduction == "l1" else default
    return {"l1": lambda x: x.abs().sum(-1), "l2": lambda x: x.norm(dim=-1), "sum": lambda x: x.sum(-1)}[kind](contrib)


def saliency(sm, batch, s, tokenizer=None) -> Scores:
    """Gradient norm ‖∂y/∂e_i‖₂ over d_model."""
    targets = resolve_targets(sm, batch)
    grad, _ = input_gradients(sm, batch, targets, s.ig_internal_batch_size)
    return _reduce(grad, s, "l2"), targets, None, None


def grad_x_input(sm, batch, s, tokenizer=None) -> Scores:
    """Gradient × input, summed over d_model."""
    targets = resolve_targets(sm, batch)
    grad, embeds = input_gradients(sm, batch, targets, s.ig_internal_batch_size)
    return _reduce(grad * embeds, s, "sum"), targets, None, None


def integrated_gradients(sm, batch, s, tokenizer=None) -> Scores:
    """Integrated gradients ``(e − b) · ∫ ∇y``, summed over d_model, with its completeness record.

    ``ig_method=adaptive`` bisects sub-intervals of ``ig_steps`` Gauss-Legendre nodes until each
    example's relative completeness gap is within ``ig_tolerance`` (or ``ig_max_steps`` is spent);
    the fixed rules use ``ig_steps`` nodes in all.
    """
    targets = resolve_targets(sm, batch)
    base = ig_baseline(sm, batch, s.ig_baseline, tokenizer, s.ig_keep_first)
    embeds = sm.embed(batch.input_ids).detach()  # (batch, pos, d_model)

    def model_fn(x, ex):  # interpolated inputs (rows, pos, d_model) of examples ex -> logits at the scored position
        return relative_to_foil(sm.forward(batch.attention_mask[ex], batch.score_pos[ex], inputs_embeds=x)[0],
                                batch.foil_ids[ex])

    with input_gradients_only(sm.model):
        if s.ig_method == "adaptive":
            integral = integrate_adaptive(model_fn, base, embeds - base, targets, s.ig_steps, s.ig_tolerance,
                                          s.ig_max_steps, s.ig_internal_batch_size)
        else:
            alphas, weights = quadrature(s.ig_method, s.ig_steps)
            integral = integrate_fixed(model_fn, base, embeds - base, targets, alphas, weights,
                                       s.ig_internal_batch_size)
    return _reduce(integral.total, s, "sum"), targets, None, integral.diagnostics()


def _attentions(sm: ScoredModel, batch: Batch) -> tuple[Tensor, tuple[Tensor, ...]]:
    targets = resolve_targets(sm, batch)
    with torch.no_grad(), eager_attention(sm.model):
        _, out = sm.forward(batch.attention_mask, batch.score_pos, input_ids=batch.input_ids, output_attentions=True)
    return targets, out.attentions  # n_layers x (batch, head, q_pos, k_pos)


def attention(sm, batch, s, tokenizer=None) -> Scores:
    """Last layer's attention from the scored position, averaged over heads."""
    targets, atts = _attentions(sm, batch)
    pattern = atts[-1].mean(1)  # (batch, head, q, k) -> (batch, q, k)
    rows = torch.arange(len(batch), device=pattern.device)
    return pattern[rows, batch.score_pos], targets, None, None


def attention_rollout(sm, batch, s, tokenizer=None) -> Scores:
    """Attention rollout: ``Π_l norm(0.5·A_l + 0.5·I)``, the scored position's row."""
    targets, atts = _attentions(sm, batch)
    eye = torch.eye(batch.input_ids.shape[1], device=atts[0].device)
    rollout = None
    for att in atts:
        a = 0.5 * att.mean(1) + 0.5 * eye  # (batch, q, k)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # (batch, q, k) @ (batch, k, k)
    rows = torch.arange(len(batch), device=eye.device)
    return rollout[rows, batch.score_pos], targets, None, None


def random(sm, batch, s, tokenizer=None) -> Scores:
    """Uniform noise from a generator seeded with ``s.seed`` (the chance baseline)."""
    gen = torch.Generator().manual_seed(s.seed)
    scores = torch.rand(batch.input_ids.shape, generator=gen).to(batch.input_ids.device)
    return scores, resolve_targets(sm, batch), None, None


REGISTRY: dict[str, Callable[..., Scores]] = {
    "normxlogit": normxlogit, "norm": norm, "logat": logat, "saliency": saliency, "grad_x_input": grad_x_input,
    "integrated_gradients": integrated_gradients, "attention": attention, "attention_rollout": attention_rollout,
    "random": random,
}
assert set(REGISTRY) == set(METHODS)


def attribute(sm: ScoredModel, batch: Batch, method: str, settings: AttributeSettings | None = None,
              tokenizer=None, info: dict | None = None) -> Attribution:
    """Attribute one batch with one method and return an :class:`Attribution`.

    Inputs are checked (method name, target range, length) before any computation.
    """
    if method not in REGISTRY:
        raise ValueError(f"unknown attribution method {method!r}: choose from {METHODS}")
    settings = settings or AttributeSettings()
    sm.check_targets(batch.target_ids)
    sm.check_length(batch.input_ids.shape[1])
    batch = batch.to(sm.device)
    start = time.perf_counter()
    scores, targets, layers, diagnostics = REGISTRY[method](sm, batch, settings, tokenizer)
    if scores.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    real = batch.attention_mask.bool()
    scores = torch.where(real, scores.detach().float(), 0.0).cpu()
    if layers is not None:
        layers = torch.where(real[None], layers.detach().float(), 0.0).cpu()
    return Attribution(method=method, scores=scores, input_ids=batch.input_ids.cpu(),
                       attention_mask=batch.attention_mask.cpu(), target_ids=targets.cpu(),
                       example_ids=list(batch.example_ids), tokens=list(batch.tokens), layer_scores=layers,
                       seconds=seconds, info=dict(info or {}), diagnostics=dict(diagnostics or {}))
