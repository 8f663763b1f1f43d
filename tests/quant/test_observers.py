"""Range observers, the asymmetric grid, the paper protocol and the 16-bit identity, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from interpipe.quant.fake import ActSpec, WeightSpec, fake_quantize, quantize_activation, quantize_weight
from interpipe.quant.observers import Observer, example_ranges, static_range
from interpipe.settings.quantize import QuantSettings, paper_grid

# two examples, two channels, right padding (the padding row holds 100s that must be ignored)
X = torch.tensor([[[1.0, -2.0], [3.0, 0.0]],
                  [[-1.0, 5.0], [100.0, 100.0]]])  # (batch, pos, d)
MASK = torch.tensor([[True, True], [True, False]])


def _range(kind, per_channel):
    obs = Observer(kind)
    obs.observe(X, MASK, per_channel)
    return [v.tolist() for v in obs.range()]


def test_per_tensor_observers():
    # example ranges: [-2, 3] and [-1, 5]
    assert _range("minmax", False) == [-2.0, 5.0]
    assert _range("avg_minmax", False) == [-1.5, 4.0]


def test_per_channel_observers():
    # channel 0: [1, 3] and [-1, -1]; channel 1: [-2, 0] and [5, 5]
    assert _range("minmax", True) == [[-1.0, -2.0], [3.0, 5.0]]
    assert _range("avg_minmax", True) == [[0.0, 1.5], [1.0, 2.5]]


def test_avg_minmax_accumulates_over_batches():
    obs = Observer("avg_minmax")
    obs.observe(X[:1], MASK[:1])
    obs.observe(X[1:], MASK[1:])
    assert [float(v) for v in obs.range()] == [-1.5, 4.0]  # the same as one batch of both examples


def test_pooled_inputs_count_each_row_as_an_example():
    lo, hi = example_ranges(torch.tensor([[1.0, -4.0], [2.0, 3.0]]), None)
    assert lo.tolist() == [-4.0, 2.0] and hi.tolist() == [1.0, 3.0]


def test_static_range_of_a_migrated_input():
    # (x - z) / s with z = [1, 0], s = [2, 1]: example 1 -> channel 0 [0, 1], channel 1 [-2, 0] -> [-2, 1];
    # example 2 -> channel 0 [-1, -1], channel 1 [5, 5] -> [-1, 5]; averaged: [-1.5, 3]
    ex_min, ex_max = example_ranges(X, MASK, per_channel=True)
    lo, hi = static_range(ex_min, ex_max, "avg_minmax", shift=torch.tensor([1.0, 0.0]), scale=torch.tensor([2.0, 1.0]))
    assert (float(lo), float(hi)) == (-1.5, 3.0)
    lo, hi = static_range(ex_min, ex_max, "minmax")
    assert (float(lo), float(hi)) == (-2.0, 5.0)


def test_unknown_observer_fails():
    with pytest.raises(ValueError, match="quantize.observer='ema'"):
        Observer("ema")
    with pytest.raises(RuntimeError, match="calibration"):
        Observer().range()


def test_asymmetric_grid_keeps_the_bit_a_symmetric_grid_wastes_on_one_sided_input():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0])  # one-sided, like a post-GELU input
    # asymmetric 2 bits: range [0, 3] -> scale 1, zero 0; 0.5 and 1.5 round half to even
    assert fake_quantize(x, 2, symmetric=False).tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]
    # symmetric 2 bits: grid -1..1, scale 3: only 0 and 3 are left for a one-sided input
    assert fake_quantize(x, 2, symmetric=True).tolist() == [0.0, 0.0, 0.0, 0.0, 3.0]


def test_per_channel_asymmetric_weights():
    w = torch.tensor([[-1.0, 0.0, 2.0], [0.5, 1.0, 2.0]])
    # row 0: range [-1, 2], scale 1, zero 1 -> exact; row 1: range [0, 2], scale 2/3, zero 0:
    # 0.5 -> 0.75 -> 1, 1 -> 1.5 -> 2 (half to even), 2 -> 3
    out = quantize_weight(w, WeightSpec(2, symmetric=False, granularity="per_channel"))
    assert torch.allclose(out, torch.tensor([[-1.0, 0.0, 2.0], [2 / 3, 4 / 3, 2.0]]), atol=1e-6)


def test_static_per_channel_activation_range():
    spec = ActSpec(2, symmetric=False, granularity="per_channel_static")
    # channel 0 range [0, 3] (scale 1), channel 1 range [-3, 0] (scale 1, zero 3)
    out = quantize_activation(torch.tensor([[1.2, -1.2], [5.0, -5.0]]), spec, torch.tensor([0.0, -3.0]),
                              torch.tensor([3.0, 0.0]))
    assert out.tolist() == [[1.0, -1.0], [3.0, -3.0]]


def test_sixteen_bits_means_not_quantized():
    w = torch.tensor([[0.123456789, -7.0]])
    assert torch.equal(quantize_weight(w, WeightSpec(16, granularity="per_channel")), w)
    assert torch.equal(quantize_activation(w, ActSpec(16), torch.tensor(-1.0), torch.tensor(1.0)), w)


@pytest.mark.parametrize("tag, w_gran, sym", [("w8a8", "per_tensor", True), ("w16a8", "per_tensor", True),
                                              ("w6a6", "per_channel", False), ("w4a4", "per_channel", False),
                                              ("w16a6", "per_channel", False), ("w8a6", "per_channel", False)])
def test_paper_protocol_per_bit_width(tag, w_gran, sym):
    grid = paper_grid(tag)
    assert (grid.w_granularity, grid.w_symmetric, grid.a_granularity, grid.a_symmetric) == (
        w_gran, sym, "per_tensor_static", sym)


def test_protocols_and_folder_tags():
    assert QuantSettings().tag_of("w6a6") == "paper"
    fine = QuantSettings(protocol="fine")
    assert fine.grid_of("w4a4").a_granularity == "per_token_dynamic" and fine.grid_of("w4a4").w_granularity == "per_group"
    custom = QuantSettings(protocol="custom", w_granularity="per_channel", w_symmetric=False)
    assert custom.tag_of("w6a6") == "wperchannel-asym-apertensor"
    assert QuantSettings(spread_bits=["w6a6"]).seeds_of("w8a8") == [0]
    assert QuantSettings(spread_bits=[]).seeds_of("w8a8") == [0, 1, 2]


def test_ablations_run_only_at_their_bits():
    methods = ["rtn", "osplus", "osplus_shift", "osplus_scale"]
    grid = QuantSettings(methods=methods, bits=["w8a8", "w6a6", "w4a4"], ablation_bits=["w6a6"]).grid()
    assert grid == [("rtn", "w8a8"), ("rtn", "w6a6"), ("rtn", "w4a4"), ("osplus", "w8a8"), ("osplus", "w6a6"),
                    ("osplus", "w4a4"), ("osplus_shift", "w6a6"), ("osplus_scale", "w6a6")]
    assert len(QuantSettings(methods=methods, bits=["w8a8", "w6a6"]).grid()) == 8  # [] = every bits setting
    with pytest.raises(ValueError, match="quantize.export entry 'osplus_shift-w8a8'"):
        QuantSettings(methods=methods, bits=["w8a8", "w6a6"], ablation_bits=["w6a6"], export=["osplus_shift-w8a8"])
    with pytest.raises(ValueError, match="w6"):
        QuantSettings(ablation_bits=["w6"])
    with pytest.raises(ValueError, match="quantize.protocol='opt'"):
        QuantSettings(protocol="opt")
