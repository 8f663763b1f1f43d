"""GPTQ against the paper's Optimal Brain Surgeon update written out column by column (Eq. 2-3)."""

from __future__ import annotations

import pytest
import torch

from interpipe.quant.fake import WeightSpec, qparams, quantize_dequantize, quantize_weight
from interpipe.quant.gptq import HessianAccumulator, gptq_quantize


def reference_gptq(w: torch.Tensor, h: torch.Tensor, spec: WeightSpec, percdamp: float) -> torch.Tensor:
    """Frantar et al. 2022, Eq. 2-3 with the fixed left-to-right order of Section 4 and no tricks:
    round column i, spread its error over the free columns with the inverse Hessian of the free
    columns, then remove column i from that inverse (Gaussian elimination of row/column i)."""
    w, h = w.double().clone(), h.double()
    h = h + percdamp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h)  # (d_in, d_in) H_F^-1 with F = every column
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)  # per output row, from the original weight
    scale, zero = qparams(lo, hi, spec.bits, spec.symmetric)
    q = torch.zeros_like(w)
    for i in range(w.shape[1]):
        q[:, i:i + 1] = quantize_dequantize(w[:, i:i + 1], scale, zero, spec.bits, spec.symmetric)
        err = (w[:, i] - q[:, i]) / hinv[i, i]  # (d_out,)
        w[:, i + 1:] -= err[:, None] * hinv[i, i + 1:][None, :]  # delta_F = -err * (H_F^-1)_{i, F}
        hinv = hinv - hinv[:, i:i + 1] @ hinv[i:i + 1, :] / hinv[i, i]  # H_{F \ i}^-1 (Eq. 3)
    return q


def _layer(seed: int = 0, n: int = 256, d_in: int = 12, d_out: int = 5):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) @ mix  # (n, d_in) correlated inputs
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return x, w


@pytest.mark.parametrize("block_size", [1, 5, 128])  # one column, blocks that do not divide d_in, one block
@pytest.mark.parametrize("bits,symmetric", [(4, True), (3, False)])
def test_gptq_equals_the_column_by_column_update(block_size, bits, symmetric):
    x, w = _layer()
    h = 2 * x.t() @ x / x.shape[0]  # (d_in, d_in)
    spec = WeightSpec(bits, symmetric, "per_channel")
    ours = gptq_quantize(w, h, spec, block_size=block_size, percdamp=0.01)
    assert torch.allclose(ours, reference_gptq(w, h, spec, 0.01), atol=1e-9)


def test_gptq_error_is_below_rtn_on_the_calibration_inputs():
    x, w = _layer(seed=1, n=512, d_in=32, d_out=16)
    acc = HessianAccumulator()
    for rows in x.split(100):  # batches of tokens
        acc.add(rows)
    assert torch.allclose(acc.hessian, 2 * x.t() @ x / x.shape[0])  # H = 2 X^T X / n
    for spec in (WeightSpec(4, True, "per_channel"), WeightSpec(3, False, "per_channel"), WeightSpec(4, True),
                 WeightSpec(4, False, "per_group", 8)):
        q_gptq = gptq_quantize(w, acc.hessian, spec, block_size=8, percdamp=0.01)
        q_rtn = quantize_weight(w, spec)
        err = lambda q: float((x @ w.t() - x @ q.t()).pow(2).sum())  # noqa: E731 ||XW^T - XQ^T||^2
        assert err(q_gptq) < 0.8 * err(q_rtn), spec


def test_gptq_stays_on_the_grid_and_zeroes_dead_inputs():
    x, w = _layer(seed=2, d_in=8, d_out=4)
    x[:, 3] = 0.0  # an input that never fires: H_33 = 0
    h = 2 * x.t() @ x / x.shape[0]
    spec = WeightSpec(4, True, "per_tensor")
    q = gptq_quantize(w.float(), h, spec, block_size=4)
    assert q.dtype == torch.float32 and bool((q[:, 3] == 0).all())
    scale, _ = qparams(w.float().min(), w.float().max(), 4, True)  # per-tensor grid of the original weight
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4) and float(steps.abs().max()) <= 7
    assert torch.equal(gptq_quantize(w, h, WeightSpec(16)), w)  # 16 bits: not quantized
