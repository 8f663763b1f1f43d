"""Fake (simulated) uniform quantization: quantize to an integer grid, then dequantize.

Everything stays in floating point so the same code runs on CPU and GPU; the error it
introduces is the error an integer kernel with the same grid would introduce (up to the
accumulator precision). Conventions follow the Outlier Suppression+ observers
(Wei et al. 2023, ModelTC/Outlier_Suppression_Plus) and SmoothQuant's absmax quantizers
(Xiao et al. 2023, mit-han-lab/smoothquant):

- symmetric: integer range ``[-(2^(b-1)-1), 2^(b-1)-1]``, ``scale = absmax / (2^(b-1)-1)``,
  zero point 0 (the restricted range, so +absmax and -absmax are both representable);
- asymmetric: integer range ``[0, 2^b-1]``, ``scale = (max - min) / (2^b-1)`` with the range
  widened to include 0, ``zero_point = round(-min / scale)``.

``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, ``x_hat = (q - zero_point) * scale``
(``torch.round`` rounds half to even). Scales and rounding are computed in float32 (float64 stays
float64) and ``x_hat`` is returned in the input's dtype: bfloat16's 8 significant bits would round
``x / scale`` before the grid does (to steps of 0.5 above 64 on an 8-bit grid). A 16-bit side is not
quantized at all: it stands for the papers' W16 / A16 (FP16), so W16A8 is activation-only quantization.

>>> import torch
>>> fake_quantize(torch.tensor([0.0, 0.26, -1.0, 1.0]), bits=2, symmetric=True)
tensor([ 0.,  0., -1.,  1.])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool

from interpipe.settings.quantize import A_GRANULARITIES, MAX_BITS, W_GRANULARITIES, check_bits, parse_bits
from interpipe.typing import Float, Tensor

EPS = torch.finfo(torch.float32).eps


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer grid ``(qmin, qmax)`` of a ``bits``-bit quantizer.

    >>> int_range(8, True), int_range(8, False)
    ((-127, 127), (0, 255))
    """
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype quantization arithmetic runs in: float32 for half-precision inputs, else their own.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


def qparams(x_min: Tensor, x_max: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point (float32, or float64 for a float64 range) from a (broadcastable) range
    ``[x_min, x_max]``.

    The range is widened to contain 0 so that zero is exactly representable.
    """
    qmin, qmax = int_range(bits, symmetric)
    x_min, x_max = x_min.to(compute_dtype(x_min.dtype)), x_max.to(compute_dtype(x_max.dtype))
    lo = torch.minimum(x_min, torch.zeros_like(x_min))
    hi = torch.maximum(x_max, torch.zeros_like(x_max))
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.clamp(scale, min=EPS)
        zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return torch.clamp(scale, min=EPS), zero


def quantize_dequantize(x: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    """``(clamp(round(x / scale) + zero, qmin, qmax) - zero) * scale`` (broadcasting), computed in
    :func:`compute_dtype` on ``x``'s device and returned in ``x``'s dtype."""
    qmin, qmax = int_range(bits, symmetric)
    work = compute_dtype(x.dtype)
    scale, zero = scale.to(device=x.device, dtype=work), zero.to(device=x.device, dtype=work)
    q = torch.div(x.to(work), scale)  # one new tensor, then in place: the out-of-place chain's values, ~4x faster on CPU
    return q.round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale).to(x.dtype)


def fake_quantize(x: Tensor, bits: int, symmetric: bool = True, dim: int | None = None) -> Tensor:
    """Quantize-dequantize ``x`` with its own min/max: per tensor, or per slice along ``dim``.

    ``dim`` is the axis the statistics are reduced over *not* — e.g. ``dim=0`` on an
    ``[out, in]`` weight gives one scale per output channel (row).
    """
    if dim is None:
        x_min, x_max = x.min(), x.max()
    else:
        reduce = [d for d in range(x.ndim) if d != dim % x.ndim]
        x_min, x_max = x.amin(dim=reduce, keepdim=True), x.amax(dim=reduce, keepdim=True)
    scale, zero = qparams(x_min, x_max, bits, symmetric)
    return quantize_dequantize(x, scale, zero, bits, symmetric)


@dataclass(frozen=True)
class WeightSpec:
    """How a linear layer's weight is quantized."""

    bits: int
    symmetric: bool = True
    granularity: str = "per_tensor"  # per_tensor | per_channel (output rows) | per_group (along inputs)
    group_size: int = 64

    def __post_init__(self) -> None:
        check_bits(self.bits, "w_bits")
        if self.granularity not in W_GRANULARITIES:
            raise ValueError(f"quantize.w_granularity={self.granularity!r} is not one of {W_GRANULARITIES}")
        if self.group_size < 1:
            raise ValueError(f"quantize.group_size={self.group_size} must be >= 1")

    def check_layer(self, name: str, d_in: int) -> None:
        """Raise ``ValueError`` if this granularity cannot apply to a layer with ``d_in`` inputs."""
        if self.granularity == "per_group" and d_in % self.group_size:
            raise ValueError(f"quantize.group_size={self.group_size} does not divide the input dimension "
                             f"{d_in} of layer {name}; pick a divisor of {d_in}")


@dataclass(frozen=True)
class ActSpec:
    """How a linear layer's input activation is quantized."""

    bits: int
    symmetric: bool = True
    granularity: str = "per_tensor_static"  # calibrated range per tensor | per input channel | per token at run time

    def __post_init__(self) -> None:
        check_bits(self.bits, "a_bits")
        if self.granularity not in A_GRANULARITIES:
            raise ValueError(f"quantize.a_granularity={self.granularity!r} is not one of {A_GRANULARITIES}")

    @property
    def static(self) -> bool:
        return self.granularity != "per_token_dynamic"

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per_channel_static"


def quantize_weight(w: Float[Tensor, "d_out d_in"], spec: WeightSpec) -> Float[Tensor, "d_out d_in"]:
    """Fake-quantize an ``[out, in]`` weight per tensor, per output channel or per input group.

    >>> w = torch.tensor([[1.0, -0.5], [0.1, 0.2]])
    >>> quantize_weight(w, WeightSpec(bits=2, granularity="per_channel"))
    tensor([[1.0000, 0.0000],
            [0.0000, 0.2000]])
    """
    if spec.bits >= MAX_BITS:
        return w
    if spec.granularity == "per_tensor":
        return fake_quantize(w, spec.bits, spec.symmetric)
    if spec.granularity == "per_channel":
        return fake_quantize(w, spec.bits, spec.symmetric, dim=0)
    d_out, d_in = w.shape
    spec.check_layer("weight", d_in)
    grouped = w.reshape(d_out * d_in // spec.group_size, spec.group_size)  # (out * n_groups, group)
    return fake_quantize(grouped, spec.bits, spec.symmetric, dim=0).reshape(d_out, d_in)


def quantize_activation(x: Float[Tensor, "... d_in"], spec: ActSpec, x_min: Tensor | None = None,
                        x_max: Tensor | None = None) -> Float[Tensor, "... d_in"]:
    """Fake-quantize an activation: with a calibrated range (static) or per token (dynamic).

    ``x_min``/``x_max`` (scalars, or ``(d_in,)`` per channel) are required for the static kinds.
    """
    if spec.bits >= MAX_BITS:
        return x
    if spec.static:
        if x_min is None or x_max is None:
            raise RuntimeError(f"{spec.granularity} activation quantization needs a calibrated range; "
                               "run calibration first")
        scale, zero = qparams(x_min, x_max, spec.bits, spec.symmetric)
        return quantize_dequantize(x, scale, zero, spec.bits, spec.symmetric)
    x_min, x_max = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)  # (..., 1) per token
    scale, zero = qparams(x_min, x_max, spec.bits, spec.symmetric)
    return quantize_dequantize(x, scale, zero, spec.bits, spec.symmetric)


def outlier_columns(x: Float[Tensor, "batch pos d_in"], threshold: float,
                    mask: Bool[Tensor, "batch pos"] | None = None) -> Bool[Tensor, "batch 1 d_in"]:
    """LLM.int8()'s outlier dimensions of each example: any (non-padding, where ``mask`` says) ``|x|`` above
    ``threshold`` (:func:`interpipe.quant.int8.outlier_dims` brings any input into this shape)."""
    big = x.abs() > threshold  # (batch, pos, d_in)
    if mask is not None:
        big = big & mask[..., None]  # padding tokens decide nothing
    return big.any(dim=1, keepdim=True)  # (batch, 1, d_in)


def decomposed_activation(x: Float[Tensor, "... d_in"], spec: ActSpec, threshold: float) -> Float[Tensor, "... d_in"]:
    """``x_O + Q(x_~O)``: LLM.int8()'s input with its outlier columns (per example, every position of the
    leading batch dimension; a 2-D input is one matrix) kept and the rest on the per-token grid ``spec``.

    Multiplied by the vector-wise quantized weight ``Q(W)`` this is the decomposition with the 16-bit
    part on the dequantized weight columns (bitsandbytes' choice); an exported model applies it.
    """
    x3 = x if x.ndim == 3 else x.reshape(1, -1, x.shape[-1])  # (batch, pos, d_in)
    dims = outlier_columns(x3, threshold)  # (batch, 1, d_in)
    x_int = x3.masked_fill(dims, 0.0)  # (batch, pos, d_in) outlier columns removed before quantizing
    return (x3 - x_int + quantize_activation(x_int, spec)).reshape(x.shape)  # (..., d_in)


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - approx)^2)`` in dB."""
    signal = reference.double().pow(2).sum()
    noise = (reference.double() - approx.double()).pow(2).sum()
    return float(10 * torch.log10(signal / noise.clamp(min=1e-30)))


def specs(settings, tag: str) -> tuple["WeightSpec", "ActSpec"]:
    """The weight and activation grids of ``settings`` (a ``QuantSettings``) at bits ``tag`` (``w8a8``)."""
    w, a = parse_bits(tag)
    grid = settings.grid_of(tag)
    return (WeightSpec(w, grid.w_symmetric, grid.w_granularity, settings.group_size),
            ActSpec(a, grid.a_symmetric, grid.a_granularity))
