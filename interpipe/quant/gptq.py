"""GPTQ: weight quantization with second-order error feedback (Frantar, Ashkboos, Hoefler and Alistarh,
*GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers*, ICLR 2023,
arXiv 2210.17323; reference code IST-DASLab/gptq, ``gptq.py``).

Per linear with weight ``W`` ``[d_out, d_in]`` and calibration inputs ``X`` ``[n, d_in]``, GPTQ
minimises the layer's output error ``||X W^T - X Q^T||^2`` over ``Q`` on the quantization grid. Its
Hessian is the same for every output row, ``H = 2 X^T X`` (accumulated here in float64 over the
non-padding calibration tokens, :class:`HessianAccumulator`). The columns are quantized one at a time,
left to right; after column ``i`` is rounded, the rest of the row absorbs its error through the
inverse Hessian of the columns still free (Optimal Brain Surgeon, the paper's Eq. 2-3)::

    err = (w_i - q_i) / [H_F^-1]_ii,        w_F <- w_F - err * [H_F^-1]_{i, F}

GPTQ's three tricks (Section 4, Algorithm 1): every row uses the same column order, so ``H_F^-1``
is shared; the rows of ``H_F^-1`` needed in turn are the rows of the upper Cholesky factor of
``H^-1`` (no inverse is updated); and the updates are applied lazily in blocks of ``block_size``
columns. ``H`` is damped by ``percdamp * mean(diag H)`` on its diagonal, and inputs that are always
zero (``H_jj = 0``) get ``H_jj = 1`` and a zero weight column, as in the reference code.

Deviations (``docs/quantization.md``): the grid is the study's (:class:`~interpipe.quant.fake.WeightSpec`,
the same as RTN's at the same bits, so the gain over RTN is the error feedback alone); the Hessians come
from one full-precision calibration pass, not layer by layer through the already quantized layers.

Uncorrelated inputs (``H`` diagonal) leave nothing to feed back: GPTQ is then round-to-nearest.

>>> import torch
>>> from interpipe.quant.fake import WeightSpec, quantize_weight
>>> w, spec = torch.tensor([[0.3, -1.0, 0.45]]), WeightSpec(3, granularity="per_channel")
>>> torch.equal(gptq_quantize(w, torch.diag(torch.tensor([1.0, 2.0, 3.0])), spec), quantize_weight(w, spec))
True
"""

from __future__ import annotations

import torch

from interpipe.quant.fake import WeightSpec, compute_dtype, qparams, quantize_dequantize
from interpipe.settings.quantize import MAX_BITS
from interpipe.typing import Float, Tensor


class HessianAccumulator:
    """``H = 2 / n * sum_t x_t x_t^T`` over the non-padding tokens of every batch added (float64).

    The scale ``2 / n`` (n tokens) does not change GPTQ's result: the damping is relative to the mean
    diagonal, and the updates use ratios of entries of ``H^-1``.
    """

    def __init__(self) -> None:
        self.sum: Tensor | None = None  # (d_in, d_in) sum of x x^T
        self.n = 0

    def add(self, rows: Float[Tensor, "n d_in"]) -> None:
        rows = rows.detach().double()  # (n, d_in)
        xtx = rows.t() @ rows  # (d_in, d_in)
        self.sum = xtx if self.sum is None else self.sum + xtx
        self.n += rows.shape[0]

    @property
    def hessian(self) -> Float[Tensor, "d_in d_in"]:
        if self.sum is None or self.n == 0:
            raise RuntimeError("no calibration tokens reached this layer: run calibration with keep_hessians=True")
        return 2.0 * self.sum / self.n


def _grid(w: Float[Tensor, "d_out d_in"], spec: WeightSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero point of the whole weight (per tensor, shape ``()``) or of each row (``(d_out, 1)``)."""
    if spec.granularity == "per_tensor":
        return qparams(w.min(), w.max(), spec.bits, spec.symmetric)
    return qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), spec.bits, spec.symmetric)


def inverse_hessian_rows(h: Float[Tensor, "d_in d_in"], percdamp: float) -> tuple[Tensor, Tensor]:
    """The damped Hessian's upper Cholesky factor of ``H^-1`` (row ``i`` = ``[H_F^-1]_{i, i:}`` scaled by
    ``1 / sqrt([H_F^-1]_ii)``) and the mask of dead inputs (``H_jj = 0``); float64."""
    h = h.double().clone()  # (d_in, d_in)
    dead = torch.diag(h) == 0  # (d_in,)
    h[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(h))
    h += damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)  # (d_in, d_in) H + lambda I
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))  # (d_in, d_in) H^-1
    return torch.linalg.cholesky(inv, upper=True), dead  # (d_in, d_in) upper U with U^T U = H^-1


@torch.no_grad()
def gptq_quantize(w: Float[Tensor, "d_out d_in"], h: Float[Tensor, "d_in d_in"], spec: WeightSpec,
                  block_size: int = 128, percdamp: float = 0.01) -> Float[Tensor, "d_out d_in"]:
    """GPTQ (Algorithm 1) of weight ``w`` with Hessian ``h`` onto ``spec``'s grid; returns the quantized
    weight in ``w``'s dtype. Per-group grids take each group's range when the loop reaches its first
    column, from the weight as updated up to the current block (the reference code's order)."""
    if spec.bits >= MAX_BITS:
        return w
    work = compute_dtype(w.dtype)
    u, dead = inverse_hessian_rows(h.to(w.device), percdamp)
    u = u.to(work)  # (d_in, d_in)
    weight = w.detach().to(work).clone()  # (d_out, d_in)
    d_in = weight.shape[1]
    if spec.granularity == "per_group":
        spec.check_layer("weight", d_in)
    scale, zero = _grid(weight, spec) if spec.granularity != "per_group" else (None, None)  # before dead columns go
    weight[:, dead] = 0.0
    quant = torch.zeros_like(weight)  # (d_out, d_in)
    for start in range(0, d_in, block_size):
        stop = min(start + block_size, d_in)
        block = weight[:, start:stop].clone()  # (d_out, block)
        errors = torch.zeros_like(block)  # (d_out, block)
        u_block = u[start:stop, start:stop]  # (block, block)
        for i in range(stop - start):
            col = start + i
            if spec.granularity == "per_group" and col % spec.group_size == 0:
                scale, zero = _grid(weight[:, col:col + spec.group_size], spec)  # (d_out, 1) each
            q = quantize_dequantize(block[:, i:i + 1], scale, zero, spec.bits, spec.symmetric)  # (d_out, 1)
            quant[:, col] = q[:, 0]
            err = (block[:, i] - q[:, 0]) / u_block[i, i]  # (d_out,)
            block[:, i:] -= err[:, None] * u_block[i, i:][None, :]  # (d_out, block - i) OBS update inside the block
            errors[:, i] = err
        weight[:, stop:] -= errors @ u[start:stop, stop:]  # (d_out, d_in - stop) the block's lazy update
    return quant.to(w.dtype)


def gptq_layers(layers: dict, hooks: dict[str, str], hessians: dict[str, HessianAccumulator], block_size: int = 128,
                percdamp: float = 0.01) -> None:
    """Give every wrapped linear (``QuantLinear`` by module path) its GPTQ weight on its own grid.

    ``hooks`` maps a module path to the name of its input, whose Hessian ``hessians`` holds (linears that
    read the same input, as q, k and v, share it).
    """
    for path, layer in layers.items():
        if hooks[path] not in hessians:
            raise RuntimeError(f"no Hessian for {path} (input {hooks[path]}): calibrate with keep_hessians=True")
        h = hessians[hooks[path]].hessian  # (d_in, d_in) float64
        layer.set_qweight(gptq_quantize(layer.weight.detach(), h, layer.w_spec, block_size, percdamp))


__all__ = ["HessianAccumulator", "gptq_layers", "gptq_quantize", "inverse_hessian_rows"]
