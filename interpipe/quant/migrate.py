"""Migration: per-channel shifting and scaling of LayerNorm outputs, folded into the weights.

For a pair LayerNorm -> linear(s) with per-channel shift ``z`` and scale ``s`` the migrated
LayerNorm outputs ``x_tilde = (x - z) / s`` and the linear computes the same function::

    LN:     beta <- (beta - z) / s,   gamma <- gamma / s
    linear: b <- b + W z  (W before scaling),   W <- W diag(s)

- **SmoothQuant** (Xiao et al. 2023, mit-han-lab/smoothquant): ``z = 0``,
  ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)`` where the weight maximum is taken over the
  output rows of every linear reading the LayerNorm (q, k and v together).
- **Outlier Suppression+** (Wei et al. 2023, ModelTC/Outlier_Suppression_Plus):
  ``z_j = (max_j + min_j) / 2`` over calibration tokens, then ``s_j = max(1, max~_j / t, min~_j / -t)``
  with the threshold ``t`` chosen by a 1-D grid from ``max|x~|`` down to 1 (:class:`SearchGrid`) minimising
  ``||Q(x~ / s) Q(W diag(s)) - FP||^2``: for q/k/v on the attention output (before the output
  projection), for fc1 on the linear's output.

A norm without a bias (RMSNorm: Llama, Qwen2) cannot output ``x_tilde``: with ``n = RMSNorm(x)``
the fold gives it ``gamma <- gamma / s`` only, so it outputs ``u = n / s``, and the shift becomes the
linears' *input shift* ``delta = z / s``. The quantized linear computes
``Q(W diag(s)) Q(u - delta) + b + W z``; at full precision
``W diag(s) (n / s - z / s) + b + W z = W n + b``, so the shift costs nothing in the FP model, whose
weights (``gamma / s``, ``W diag(s)``, ``b``) are a stock Hugging Face folder, and the bias ``b + W z``
lives in the quantized layer (:class:`~interpipe.quant.layers.QuantLinear`).

In post-LN blocks the shortcut gets the inverse transform (see :mod:`interpipe.quant.arch`).

What the folded weights do not hold comes back to the caller as a :class:`Migration`: the input
shifts (for :func:`~interpipe.quant.layers.wrap_layers` and the exported folders) and the shortcut
restores, forward pre-hooks it installs on the post-LN residual modules and can remove. Nothing is
stored on the Hugging Face modules themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from interpipe.quant.arch import Arch, Pair, get_module, is_conv1d, linear_weight
from interpipe.quant.calibrate import Calibration
from interpipe.quant.fake import ActSpec, WeightSpec, compute_dtype, quantize_activation, quantize_weight
from interpipe.quant.observers import Observer
from interpipe.quant.recipe import ShortcutRestore
from interpipe.typing import Float, Tensor


@dataclass
class PairMigration:
    """The shift and scale chosen for one pair, and how the search went."""

    pair: Pair
    shift: Tensor  # (d,)
    scale: Tensor  # (d,)
    threshold: float | None = None  # OS+ only
    loss_before: float | None = None  # OS+ only: loss at t = max|x~| (shift only)
    loss_after: float | None = None

    def row(self) -> dict:
        return {"norm": self.pair.norm, "kind": self.pair.kind, "block": self.pair.block, "hook": self.pair.hook,
                "scale_max": float(self.scale.max()), "scale_min": float(self.scale.min()),
                "n_scaled": int((self.scale > 1).sum()), "shift_absmax": float(self.shift.abs().max()),
                "threshold": self.threshold, "loss_shift_only": self.loss_before, "loss_best": self.loss_after}


@dataclass
class Migration:
    """A migration folded into a model, and what its weights alone do not hold (the caller keeps it).

    - ``pairs``: the shift and scale chosen for every pair (empty for a migration loaded from a folder);
    - ``input_shifts``: per linear behind a bias-free norm (module path) its input shift ``delta``
      ``(d_in,)``; it cancels at full precision, so only the quantizer reads it
      (:func:`~interpipe.quant.layers.wrap_layers`, the exported recipe);
    - ``shortcuts``: per post-LN residual module (path) the
      :class:`~interpipe.quant.recipe.ShortcutRestore` installed on it as a forward pre-hook: the
      migrated model computes the original function while it is installed (:meth:`remove` takes
      every one off).
    """

    pairs: list[PairMigration] = field(default_factory=list)
    input_shifts: dict[str, Tensor] = field(default_factory=dict)
    shortcuts: dict[str, ShortcutRestore] = field(default_factory=dict)
    handles: list = field(default_factory=list, repr=False)

    def add_input_shift(self, path: str, delta: Float[Tensor, "d_in"]) -> None:
        """The quantizer of linear ``path`` sees ``x - delta`` and its output gains ``W delta`` (composes)."""
        delta = delta.detach().float().clone()
        old = self.input_shifts.get(path)
        self.input_shifts[path] = delta if old is None else old + delta

    def add_shortcut(self, model: nn.Module, path: str, scale: Float[Tensor, "d"], shift: Float[Tensor, "d"]) -> None:
        """Make module ``path`` (``BertSelfOutput``/``BertOutput``) restore its residual input ``h~ * s + z``.

        Its ``input_tensor`` (the migrated LayerNorm output ``(h - z) / s``) becomes ``h`` again before
        the residual add; a second call for the same module composes (scales multiply). The hook runs
        before those already on the module, so the restore of a later migration of the same model
        (its own :class:`Migration`) undoes its fold before the earlier one's restore runs.
        """
        old = self.shortcuts.get(path)
        if old is not None:  # restore(x) = old(new(x)) where new(x) = x * scale + shift
            old.scale, old.shift = scale * old.scale, shift * old.scale + old.shift
            return
        hook = ShortcutRestore(scale.detach().clone(), shift.detach().clone())
        self.shortcuts[path] = hook
        module = model.get_submodule(path)
        self.handles.append(module.register_forward_pre_hook(hook, prepend=True, with_kwargs=True))

    def shortcut_tensors(self) -> dict[str, Tensor]:
        """Every shortcut restore as flat tensors ``{"<module>.scale": s, "<module>.shift": z}``."""
        out: dict[str, Tensor] = {}
        for path, hook in self.shortcuts.items():
            out[f"{path}.scale"], out[f"{path}.shift"] = hook.scale.contiguous(), hook.shift.contiguous()
        return out

    def input_shift_tensors(self) -> dict[str, Tensor]:
        """Every input shift as flat tensors ``{"<module>.input_shift": delta}``."""
        return {f"{path}.input_shift": delta.contiguous() for path, delta in self.input_shifts.items()}

    def remove(self) -> None:
        """Take the shortcut restores off the model (the input shifts stay recorded here)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def smoothquant_scales(act_absmax: Float[Tensor, "d"], weights: list[Tensor], alpha: float = 0.5) -> Float[Tensor, "d"]:
    """SmoothQuant's ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)`` (weights ``[out, in]``).

    Both maxima are clamped at 1e-5 as in the reference implementation. The scales lie on the weights'
    device (the activation maximum comes from the calibration statistics, on the CPU) in float32, or
    float64 when either input is.

    >>> smoothquant_scales(torch.tensor([4.0, 1.0]), [torch.tensor([[1.0, 4.0]])], alpha=0.5)
    tensor([2.0000, 0.5000])
    """
    work = compute_dtype(torch.promote_types(act_absmax.dtype, weights[0].dtype))
    w_absmax = torch.cat([w.detach().abs().to(work) for w in weights], dim=0).amax(dim=0).clamp(min=1e-5)  # (d,)
    a_absmax = act_absmax.to(device=w_absmax.device, dtype=work).clamp(min=1e-5)  # (d,)
    return (a_absmax.pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def fold(model: nn.Module, arch: Arch, pair: Pair, shift: Tensor, scale: Tensor, migration: Migration) -> None:
    """Fold ``x -> (x - shift) / scale`` into the pair's norm and linears (float64 math).

    A norm with a bias takes the shift (``beta <- (beta - z) / s``) and the linears' biases gain
    ``W z``; a norm without one takes the scale only and the linears get the input shift ``z / s``,
    recorded in ``migration`` as is a post-LN pair's shortcut restore (installed on ``model``).
    """
    norm = get_module(model, pair.norm)
    s, z = scale.double().to(norm.weight.device), shift.double().to(norm.weight.device)  # (d,), (d,)
    linears = [get_module(model, path) for path in pair.linears]
    norm_bias = getattr(norm, "bias", None)
    absorb = norm_bias is not None and all(lin.bias is not None for lin in linears)
    if absorb:
        norm_bias.copy_(((norm_bias.double() - z) / s).to(norm_bias.dtype))
    norm.weight.copy_((norm.weight.double() / s).to(norm.weight.dtype))
    for path, lin in zip(pair.linears, linears):
        w = linear_weight(lin).double()  # (out, in)
        if absorb:
            lin.bias.copy_((lin.bias.double() + w @ z).to(lin.bias.dtype))  # b + W z, W before scaling
        elif bool(z.abs().max() > 0):
            migration.add_input_shift(path, (z / s).float())  # (in,): the quantizer's x - delta
        new_w = w * s[None, :]  # (out, in): column j scaled by s_j
        lin.weight.copy_((new_w.t() if is_conv1d(lin) else new_w).to(lin.weight.dtype))
    if pair.shortcut is not None:
        migration.add_shortcut(model, pair.shortcut, scale.to(norm.weight.device), shift.to(norm.weight.device))


def _pair_weights(model: nn.Module, pair: Pair) -> tuple[list[Tensor], list[Tensor]]:
    weights, biases = [], []
    for path in pair.linears:
        lin = get_module(model, path)
        w = linear_weight(lin).detach().float()
        weights.append(w)
        biases.append(lin.bias.detach().float() if lin.bias is not None else torch.zeros(w.shape[0], device=w.device))
    return weights, biases


def split_qkv(qkv: Float[Tensor, "batch pos d_qkv"], arch: Arch) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values ``(batch, head, pos, d_head)`` from the concatenated q/k/v outputs.

    ``split`` and ``blocks`` layouts hold ``[q | k | v]`` rows (keys and values with
    ``n_kv_heads`` heads); ``heads`` (a fused projection as GPT-NeoX's) holds ``[q k v]`` per head.
    """
    batch, pos, _ = qkv.shape
    h, kv, d = arch.n_heads, arch.n_kv_heads, arch.d_head
    if arch.qkv_layout == "heads":
        q, k, v = qkv.reshape(batch, pos, h, 3 * d).transpose(1, 2).chunk(3, dim=-1)  # each (batch, head, pos, d_head)
        return q, k, v
    q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)  # (batch, pos, h*d), (batch, pos, kv*d) x2
    q = q.reshape(batch, pos, h, d).transpose(1, 2)  # (batch, head, pos, d_head)
    k, v = (t.reshape(batch, pos, kv, d).transpose(1, 2).repeat_interleave(h // kv, dim=1)
            for t in (k, v))  # (batch, head, pos, d_head): query head i reads KV head i // group
    return q, k, v


def attention_output(x: Float[Tensor, "batch pos d"], mask: Tensor, weights: list[Tensor], biases: list[Tensor],
                     arch: Arch) -> Float[Tensor, "batch pos d_attn"]:
    """Softmax attention's output before the output projection, from q/k/v weights ``[out, in]``.

    Rotary position embeddings are not applied: this is the OS+ search's loss, a proxy that ranks
    thresholds; the fold itself is exact whatever the positions.
    """
    w, b = torch.cat(weights, 0), torch.cat(biases, 0)  # (d_qkv, d), (d_qkv,)
    q, k, v = split_qkv(x @ w.t() + b, arch)  # each (batch, head, pos, d_head)
    pos = x.shape[1]
    scores = (q @ k.transpose(-1, -2)) * arch.attn_scale  # (batch, head, q_pos, k_pos)
    allowed = mask[:, None, None, :].clone()  # (batch, 1, 1, k_pos)
    if arch.causal:
        allowed = allowed & torch.ones(pos, pos, dtype=torch.bool, device=x.device).tril()[None, None]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    out = scores.softmax(-1) @ v  # (batch, head, pos, d_head)
    return out.transpose(1, 2).reshape(x.shape[0], pos, -1)  # (batch, pos, head * d_head)


class _OSPlusSearch:
    """Loss of one pair under a candidate threshold ``t`` (shifted inputs, quantized both sides).

    The activation range of each candidate comes from the same observer the quantized model uses.
    """

    def __init__(self, pair: Pair, arch: Arch, xs: list[tuple[Tensor, Tensor]], weights, biases, shift: Tensor,
                 w_spec: WeightSpec, a_spec: ActSpec, observer: str = "avg_minmax"):
        self.pair, self.arch, self.w_spec, self.a_spec, self.observer = pair, arch, w_spec, a_spec, observer
        dev = weights[0].device
        shift = shift.to(dev)
        self.weights = weights
        self.biases = [b + w @ shift for w, b in zip(weights, biases)]  # shift compensation b + W z
        self.xs = [(x.to(dev).float() - shift, m.to(dev)) for x, m in xs]  # shifted inputs x~ = x - z
        self.targets = [self._output(x, m, weights) for x, m in self.xs]

    def _output(self, x, mask, weights):
        if self.pair.kind == "qkv":
            out = attention_output(x, mask, weights, self.biases, self.arch)
        else:
            out = x @ torch.cat(weights, 0).t()  # (batch, pos, d_ff) or gate|up; the bias cancels in the difference
        return out[mask]  # (n_tokens, d_out)

    def loss(self, scale: Tensor) -> float:
        qw = [quantize_weight(w * scale[None, :], self.w_spec) for w in self.weights]
        scaled = [x / scale for x, _ in self.xs]
        obs = Observer(self.observer)
        for xsc, (_, mask) in zip(scaled, self.xs):
            obs.observe(xsc, mask, per_channel=self.a_spec.per_channel)
        lo, hi = obs.range()
        total, count = 0.0, 0
        for xsc, (_, mask), target in zip(scaled, self.xs, self.targets):
            xq = quantize_activation(xsc, self.a_spec, lo.to(xsc), hi.to(xsc))
            out = self._output(xq, mask, qw)
            total += float((out - target).pow(2).sum())
            count += target.shape[0]
        return total / max(count, 1)  # sum over channels, mean over tokens


def _first_examples(xs: list[tuple[Tensor, Tensor]], n: int | None) -> list[tuple[Tensor, Tensor]]:
    """The first ``n`` examples of a list of ``(x, mask)`` batches (all when ``n`` is None or 0)."""
    out, left = [], n if n else sum(x.shape[0] for x, _ in xs)
    for x, mask in xs:
        if left <= 0:
            break
        out.append((x[:left], mask[:left]))
        left -= x.shape[0]
    return out


@dataclass(frozen=True)
class SearchGrid:
    """The OS+ threshold grid: ``max(steps, ceil((top - t_min) / step))`` points from ``top`` down to ``t_min``.

    The official code searches ``max(100, max|x~| / 0.5)`` thresholds down to ``t = 1.0``.

    >>> SearchGrid(steps=3, step=0.0, t_min=1.0).thresholds(5.0)
    [5.0, 3.0, 1.0]
    >>> len(SearchGrid(steps=100, step=0.5, t_min=1.0).thresholds(201.0))
    400
    """

    steps: int = 100
    step: float = 0.5
    t_min: float = 1.0

    def thresholds(self, top: float) -> list[float]:
        if top <= self.t_min:
            return [top]  # nothing to clip: every scale stays 1
        n = max(self.steps, math.ceil((top - self.t_min) / self.step) if self.step > 0 else 0)
        return [top - (top - self.t_min) * i / max(n - 1, 1) for i in range(n)]


def osplus_pair(pair: Pair, arch: Arch, model: nn.Module, calib: Calibration, w_spec: WeightSpec,
                a_spec: ActSpec, grid: SearchGrid = SearchGrid(), search_samples: int | None = None,
                observer: str = "avg_minmax", shift: bool = True, scale: bool = True) -> PairMigration:
    """OS+ shift (from every calibration token) and searched scale for one pair (not yet folded).

    The threshold search evaluates its loss on the first ``search_samples`` calibration examples
    (all with ``None`` or 0). ``shift=False`` / ``scale=False`` give the ablations scale-only
    (``z = 0``) and shift-only (``s = 1``).
    """
    stats = calib.stats[pair.hook]
    cmax, cmin = stats.max.float(), stats.min.float()
    z = (cmax + cmin) / 2 if shift else torch.zeros_like(cmax)  # (d,) channel-wise centre
    smax, smin = cmax - z, cmin - z  # symmetric per channel after shifting
    ones = torch.ones_like(smax)
    if not scale:
        return PairMigration(pair, z, ones)
    weights, biases = _pair_weights(model, pair)
    xs = _first_examples(calib.pair_inputs[pair.hook], search_samples)
    search = _OSPlusSearch(pair, arch, xs, weights, biases, z, w_spec, a_spec, observer)
    top = float(torch.maximum(smax.abs(), smin.abs()).max())
    best = (None, float("inf"), None)
    first_loss = None
    for t in grid.thresholds(top):
        s = torch.maximum(ones, torch.maximum(smax / t, smin / -t)).to(weights[0].device)
        loss = search.loss(s)
        first_loss = loss if first_loss is None else first_loss
        if loss < best[1]:
            best = (t, loss, s)
    return PairMigration(pair, z, best[2].cpu(), threshold=best[0], loss_before=first_loss, loss_after=best[1])


def migrate(model: nn.Module, arch: Arch, calib: Calibration, method: str, w_spec: WeightSpec, a_spec: ActSpec,
            alpha: float = 0.5, grid: SearchGrid = SearchGrid(), search_samples: int | None = None,
            observer: str = "avg_minmax") -> Migration:
    """Compute and fold the migration of every pair of ``arch`` into ``model`` (in place).

    ``method`` is ``smoothquant``, ``osplus`` or an OS+ ablation (``osplus_shift``: shift only,
    ``osplus_scale``: scale only); scales are computed from the unmigrated model (pairs do not
    share weights, so the order does not matter). The returned :class:`Migration` holds the pairs'
    shifts and scales, the input shifts and the installed shortcut restores.
    """
    done = []
    for pair in arch.pairs:
        if method == "smoothquant":
            weights, _ = _pair_weights(model, pair)
            scale = smoothquant_scales(calib.stats[pair.hook].absmax.float(), weights, alpha)
            done.append(PairMigration(pair, torch.zeros_like(scale), scale))
        elif method in ("osplus", "osplus_shift", "osplus_scale"):
            done.append(osplus_pair(pair, arch, model, calib, w_spec, a_spec, grid, search_samples, observer,
                                    shift=method != "osplus_scale", scale=method != "osplus_shift"))
        else:
            raise ValueError(f"unknown migration method {method!r}: use smoothquant, osplus, osplus_shift or osplus_scale")
    migration = Migration(done)
    for m in done:
        fold(model, arch, m.pair, m.shift, m.scale, migration)
    return migration
