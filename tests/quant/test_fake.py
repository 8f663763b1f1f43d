"""The fake quantizer against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from interpipe.quant.fake import (ActSpec, WeightSpec, fake_quantize, int_range, qparams, quantize_activation,
                                  quantize_weight)


def test_symmetric_grid_rounds_half_to_even():
    # 3 bits symmetric: grid -3..3, absmax 3 -> scale 1
    x = torch.tensor([-1.5, 0.2, 0.7, 3.0, 2.5])
    assert fake_quantize(x, 3, symmetric=True).tolist() == [-2.0, 0.0, 1.0, 3.0, 2.0]


def test_asymmetric_grid_and_zero_point():
    # 2 bits asymmetric: grid 0..3, range [-1, 2] -> scale 1, zero point 1
    x = torch.tensor([-1.0, 0.0, 0.4, 2.0])
    scale, zero = qparams(x.min(), x.max(), 2, symmetric=False)
    assert float(scale) == 1.0 and float(zero) == 1.0
    assert fake_quantize(x, 2, symmetric=False).tolist() == [-1.0, 0.0, 0.0, 2.0]


def test_asymmetric_range_is_widened_to_contain_zero():
    # all positive: range [0, 3] with 2 bits -> scale 1, zero point 0, 0 stays exact
    x = torch.tensor([1.0, 2.2, 3.0])
    assert fake_quantize(x, 2, symmetric=False).tolist() == [1.0, 2.0, 3.0]


def test_eight_bit_symmetric_value():
    # absmax 1.27 -> scale 0.01; 0.1234 -> 12 * 0.01
    x = torch.tensor([1.27, 0.1234, -0.005])
    out = fake_quantize(x, 8, symmetric=True)
    assert out.tolist() == pytest.approx([1.27, 0.12, -0.0], abs=1e-7)
    assert int_range(8, True) == (-127, 127) and int_range(4, False) == (0, 15)


def test_weight_granularities():
    w = torch.tensor([[4.0, 1.0, -2.0, 0.6],
                      [0.5, 0.25, 0.1, -0.3]])
    # per tensor, 3 bits symmetric: scale 4/3
    s = 4 / 3
    expected = [[4.0, s, -2 * s, 0.0], [0.0, 0.0, 0.0, 0.0]]
    pt = quantize_weight(w, WeightSpec(3, granularity="per_tensor"))
    assert torch.allclose(pt, torch.tensor(expected), atol=1e-6)
    # per channel: row 2 has its own scale 0.5/3
    pc = quantize_weight(w, WeightSpec(3, granularity="per_channel"))
    s2 = 0.5 / 3
    assert torch.allclose(pc[1], torch.tensor([0.5, 2 * s2, 1 * s2, -2 * s2]), atol=1e-6)
    # per group of 2 inputs: group (4, 1) scale 4/3 -> (4, 4/3); group (-2, 0.6) scale 2/3 -> (-2, 2/3)
    pg = quantize_weight(w, WeightSpec(3, granularity="per_group", group_size=2))
    assert torch.allclose(pg[0], torch.tensor([4.0, 4 / 3, -2.0, 2 / 3]), atol=1e-6)


def test_static_activation_clamps_outside_calibrated_range():
    spec = ActSpec(8, symmetric=True, granularity="per_tensor_static")
    out = quantize_activation(torch.tensor([2.0, -0.5, 0.25]), spec, torch.tensor(-1.0), torch.tensor(1.0))
    assert out.tolist() == pytest.approx([1.0, -64 / 127, 32 / 127], abs=1e-7)


def test_per_token_dynamic_uses_each_rows_range():
    spec = ActSpec(2, symmetric=True, granularity="per_token_dynamic")
    x = torch.tensor([[1.0, 0.4], [10.0, 6.0]])
    # 2 bits symmetric: grid -1..1; row scales 1 and 10
    assert quantize_activation(x, spec).tolist() == [[1.0, 0.0], [10.0, 10.0]]


def test_static_needs_calibration():
    with pytest.raises(RuntimeError, match="calibrat"):
        quantize_activation(torch.ones(2), ActSpec(8))


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_bits_outside_range_fail(bits):
    with pytest.raises(ValueError, match="2..16"):
        WeightSpec(bits)
    with pytest.raises(ValueError, match="2..16"):
        ActSpec(bits)


def test_group_size_must_divide_input_dimension():
    spec = WeightSpec(8, granularity="per_group", group_size=48)
    with pytest.raises(ValueError, match="group_size=48 does not divide the input dimension 128"):
        spec.check_layer("h.0.mlp.c_fc", 128)


def assert_same_grid(on_cpu: torch.Tensor, on_cuda: torch.Tensor, x: torch.Tensor, bits: int, symmetric: bool,
                     max_share: float = 1e-3) -> None:
    """Two fake quantizations of ``x`` agree up to where an entry at a bin edge rounds: every entry
    equal or one grid step apart, and at most ``max_share`` of them apart. The step bound is the
    per-tensor step of ``x``, which no finer granularity's step exceeds."""
    step, _ = qparams(x.min(), x.max(), bits, symmetric)
    diff = (on_cpu - on_cuda.cpu()).abs()  # same shape as x
    assert float(diff.max()) <= float(step) * (1 + 1e-5)
    assert float((diff > 0).float().mean()) <= max_share


@pytest.mark.gpu
def test_fake_quantization_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    for spec in (WeightSpec(8), WeightSpec(6, granularity="per_channel"), WeightSpec(4, False, "per_group", 32)):
        assert_same_grid(quantize_weight(w, spec), quantize_weight(w.cuda(), spec), w, spec.bits, spec.symmetric)
    spec = ActSpec(6, symmetric=False, granularity="per_token_dynamic")
    assert_same_grid(quantize_activation(w, spec), quantize_activation(w.cuda(), spec), w, spec.bits, spec.symmetric)
    x_min, x_max = w.min(), w.max()
    spec = ActSpec(8)  # static: the calibrated range on the CPU meets a CUDA activation
    assert_same_grid(quantize_activation(w, spec, x_min, x_max), quantize_activation(w.cuda(), spec, x_min, x_max),
                     w, spec.bits, spec.symmetric)


def test_token_mask_is_set_only_inside_its_block():
    from interpipe.quant.layers import TokenMask

    tokens, mask = TokenMask(), torch.tensor([[True, False]])
    x = torch.arange(4.0).reshape(1, 2, 2)  # (batch, pos, d)
    with tokens.covering(mask):
        assert torch.equal(tokens.select(x), torch.tensor([[0.0, 1.0]]))  # the padding row left out
    assert tokens.mask is None
    with pytest.raises(RuntimeError, match="no token mask"):  # outside a block: no silent padding rows
        tokens.select(x)
    with pytest.raises(TypeError):
        TokenMask(mask)  # set only through covering
    with pytest.raises(RuntimeError):
        with tokens.covering(mask):
            raise RuntimeError("a failed forward")
    assert tokens.mask is None  # no stale mask for the next forward
