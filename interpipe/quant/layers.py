"""Quantized layer wrappers for ``nn.Linear`` and GPT-2's ``Conv1D``.

:class:`QuantLinear` replaces a linear in place (same module path) and holds the original as
``inner``. Its modes:

- ``fp``: the original layer, untouched;
- ``quant``: fake-quantized input (static range set by :meth:`QuantLinear.set_range`, or per
  token) times the fake-quantized weight.

Static ranges come from the calibration pass (:func:`~interpipe.quant.observers.static_range`).

With ``track_error`` on it also accumulates the layer-local error (same input through the
full-precision layer) for the per-layer MSE/SQNR table.

A linear behind a bias-free norm migrated by OS+ is given an input shift ``delta``
(``Migration.input_shifts`` of :mod:`~interpipe.quant.migrate`, passed to :func:`wrap_layers`): the
quantizer then sees ``x - delta`` (its range is that of ``x - delta``) and the output is
``Q(W) Q(x - delta) + b + W delta``, equal to the layer's at full precision.

With a ``threshold`` (LLM.int8(), :mod:`~interpipe.quant.int8`) the input dimensions of an example that
exceed it are multiplied in full precision and the rest on the grids; the layer counts how many it
decomposed (``decomposed_share``). A weight quantized elsewhere (GPTQ, :mod:`~interpipe.quant.gptq`)
is given with :meth:`QuantLinear.set_qweight`.

The local error counts non-padding tokens only: every wrapper of one model shares one
:class:`TokenMask`, which holds the batch's mask only inside ``with tokens.covering(batch.mask):``;
a wrapper tracking its error outside such a block raises instead of counting padding.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Bool
from torch import nn

from interpipe.quant.arch import get_module, is_conv1d, linear_weight, set_module
from interpipe.quant.calibrate import token_rows
from interpipe.quant.fake import ActSpec, WeightSpec, quantize_activation, quantize_weight
from interpipe.quant.int8 import int8_linear
from interpipe.typing import Float, Tensor

MODES = ("fp", "quant")


def covering(tokens: "TokenMask | None", mask: Bool[Tensor, "batch pos"]):
    """``tokens.covering(mask)``, or a no-op context when there is no token mask (FP runs)."""
    return nullcontext() if tokens is None else tokens.covering(mask)


@dataclass
class TokenMask:
    """The current batch's non-padding mask, shared by every wrapper of one quantized model.

    Set only inside :meth:`covering` (``with tokens.covering(batch.mask): model(...)``), so no
    exception leaves a stale mask behind; :meth:`select` outside such a block raises, so a runner
    that forgets it fails instead of counting padding as tokens.
    """

    mask: Bool[Tensor, "batch pos"] | None = field(default=None, init=False)

    @contextmanager
    def covering(self, mask: Bool[Tensor, "batch pos"]) -> Iterator[None]:
        """The wrappers see ``mask`` (``(batch, pos)`` bool) for the forwards inside the block."""
        previous, self.mask = self.mask, mask
        try:
            yield
        finally:
            self.mask = previous

    def select(self, x: Float[Tensor, "*rows d"], layer: str = "a quantized layer") -> Float[Tensor, "n d"]:
        """Rows of ``x`` (``[batch, pos, d]``) at non-padding tokens, flattened to ``[n, d]``."""
        if self.mask is None:
            raise RuntimeError(f"{layer} tracks its error but no token mask is set: run the forward inside "
                               "`with tokens.covering(batch.mask):` so padding is not counted")
        return token_rows(x, self.mask)


@dataclass
class ErrorStats:
    """Running sums for MSE and SQNR of one layer's output."""

    sq_err: float = 0.0
    sq_ref: float = 0.0
    count: int = 0
    extra: dict = field(default_factory=dict)

    def add(self, ref: Tensor, approx: Tensor) -> None:
        diff = (ref.double() - approx.double())
        self.sq_err += float(diff.pow(2).sum())
        self.sq_ref += float(ref.double().pow(2).sum())
        self.count += ref.numel()

    @property
    def mse(self) -> float:
        return self.sq_err / max(self.count, 1)

    @property
    def sqnr_db(self) -> float:
        import math

        return 10 * math.log10(max(self.sq_ref, 1e-30) / max(self.sq_err, 1e-30))


class QuantLinear(nn.Module):
    """A fake-quantized ``nn.Linear`` / ``Conv1D`` (weight ``[out, in]`` internally)."""

    def __init__(self, inner: nn.Module, name: str, kind: str, w_spec: WeightSpec, a_spec: ActSpec,
                 tokens: TokenMask, input_shift: Float[Tensor, "d_in"] | None = None, threshold: float | None = None):
        super().__init__()
        w_spec.check_layer(name, linear_weight(inner).shape[1])
        self.inner, self.name, self.kind = inner, name, kind
        self.w_spec, self.a_spec, self.tokens = w_spec, a_spec, tokens
        self.mode = "fp"
        self.track_error = False
        self.local = ErrorStats()
        self.register_buffer("x_min", None, persistent=False)  # static range: () per tensor or (d_in,) per channel
        self.register_buffer("x_max", None, persistent=False)
        self._qweight: Tensor | None = None
        shift = input_shift.to(self.weight) if input_shift is not None else None
        self.register_buffer("input_shift", shift, persistent=False)  # (d_in,): the quantizer sees x - delta
        self.threshold = threshold  # LLM.int8(): input dimensions with any |x| above it stay in full precision
        self.decomposed = [0, 0]  # LLM.int8(): decomposed (example, dimension) pairs, and all of them

    @property
    def decomposed_share(self) -> float:
        """Share of input dimensions LLM.int8() kept in full precision, over the examples seen (NaN if none)."""
        return self.decomposed[0] / self.decomposed[1] if self.decomposed[1] else float("nan")

    @property
    def weight(self) -> Float[Tensor, "d_out d_in"]:
        return linear_weight(self.inner)

    @property
    def bias(self) -> Tensor | None:
        return self.inner.bias

    def qweight(self) -> Float[Tensor, "d_out d_in"]:
        if self._qweight is None:
            self._qweight = quantize_weight(self.weight.detach(), self.w_spec)
        return self._qweight

    def set_qweight(self, qweight: Float[Tensor, "d_out d_in"]) -> None:
        """Use ``qweight`` (already on the weight grid, e.g. from GPTQ) instead of rounding the weight."""
        if qweight.shape != self.weight.shape:
            raise ValueError(f"{self.name}: quantized weight {tuple(qweight.shape)} != weight {tuple(self.weight.shape)}")
        self._qweight = qweight.detach().to(self.weight)

    def set_range(self, x_min: Tensor, x_max: Tensor) -> None:
        """The calibrated range of this layer's (shifted) input, for static activation grids (kept in
        float32 on the weight's device: the grid's scale is computed from it)."""
        device = self.weight.device
        self.x_min, self.x_max = x_min.to(device, torch.float32), x_max.to(device, torch.float32)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}")
        self.mode = mode

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        if self.mode == "fp":
            return self.inner(x)
        shifted = x if self.input_shift is None else x - self.input_shift  # (..., d_in) what the quantizer sees
        if self.threshold is not None:
            out, dims = int8_linear(shifted, self.weight.detach(), self.qweight(), self.bias, self.a_spec,
                                    self.threshold, self.tokens.mask)  # (..., d_out), (batch, 1, d_in)
            self.decomposed[0] += int(dims.sum())
            self.decomposed[1] += dims.numel()
        else:
            xq = quantize_activation(shifted, self.a_spec, self.x_min, self.x_max)
            out = F.linear(xq, self.qweight(), self.bias)  # (..., d_out)
        if self.input_shift is not None:
            out = out + self.weight.detach() @ self.input_shift  # + W delta (d_out,): what the shift took out
        if self.track_error:
            ref = self.inner(x)
            self.local.add(self.tokens.select(ref.detach(), self.name), self.tokens.select(out.detach(), self.name))
        return out


def wrap_layers(model: nn.Module, targets: list, w_spec: WeightSpec, a_spec: ActSpec, tokens: TokenMask, *,
                input_shifts: Mapping[str, Tensor], threshold: float | None = None) -> dict[str, QuantLinear]:
    """Replace every target linear by a :class:`QuantLinear` (in place); returns them by path.

    ``input_shifts`` (module path -> ``delta``, the ``Migration.input_shifts`` of an OS+ migration;
    empty without one) gives the linears behind a bias-free norm their input shift; ``threshold``
    makes every layer LLM.int8()'s decomposed multiplication.
    """
    wrapped: dict[str, QuantLinear] = {}
    for target in targets:
        inner = get_module(model, target.module)
        layer = QuantLinear(inner, target.module, target.kind, w_spec, a_spec, tokens,
                            input_shifts.get(target.module), threshold)
        set_module(model, target.module, layer)
        wrapped[target.module] = layer
    return wrapped


def check_targets(model: nn.Module, targets: list, w_spec: WeightSpec) -> None:
    """Fail early (before calibration) if a target cannot take the weight granularity."""
    for target in targets:
        module = get_module(model, target.module)
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise ValueError(f"layer {target.module} is a {type(module).__name__}, not a Linear/Conv1D")
        w_spec.check_layer(target.module, linear_weight(module).shape[1])
