"""LLM.int8() (vector-wise int8 + outlier decomposition) and activation granularity against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from interpipe.quant.fake import ActSpec, quantize_activation
from interpipe.quant.int8 import act_grid, int8_linear, outlier_dims, weight_grid
from interpipe.quant.layers import QuantLinear, TokenMask
from interpipe.quant.study import specs
from interpipe.settings.quantize import QuantSettings

# One example, two tokens, three input dimensions; dimension 1 holds an outlier (10 > 6).
X = [[1.013, 10.0, -2.54], [0.333, -1.0, 1.27]]
W = [[0.5, 1.27, -0.254], [2.54, 0.1, 0.707]]  # (d_out, d_in)
B = [0.1, -0.2]
# By hand. Int8 part: dimension 1 removed, row scales of X 2.54/127 = 0.02 and 1.27/127 = 0.01:
#   X_int -> [[51 * 0.02, 0, -2.54], [33 * 0.01, 0, 1.27]] = [[1.02, 0, -2.54], [0.33, 0, 1.27]];
#   weight rows (all columns) absmax 1.27 -> scale 0.01 and 2.54 -> scale 0.02:
#   W -> [[0.50, 1.27, -25 * 0.01], [2.54, 5 * 0.02, 35 * 0.02]] = [[0.5, 1.27, -0.25], [2.54, 0.1, 0.70]].
#   token 0: 1.02 * 0.5 + (-2.54)(-0.25) = 1.145;   1.02 * 2.54 + (-2.54)(0.70) = 0.8128
#   token 1: 0.33 * 0.5 + 1.27 * (-0.25) = -0.1525; 0.33 * 2.54 + 1.27 * 0.70 = 1.7272
# 16-bit part: dimension 1 with the full-precision weight column (1.27, 0.1):
#   token 0: 10 * 1.27 = 12.7, 10 * 0.1 = 1.0;   token 1: -1.27, -0.1
EXPECTED = [[1.145 + 12.7 + 0.1, 0.8128 + 1.0 - 0.2], [-0.1525 - 1.27 + 0.1, 1.7272 - 0.1 - 0.2]]


def _numpy_int8(x: np.ndarray, w: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's Eq. (7) written out in numpy for one matrix (independent of the library)."""
    outliers = (np.abs(x) > threshold).any(axis=0)  # (d_in,)
    x_int = np.where(outliers[None, :], 0.0, x)
    cx = np.abs(x_int).max(axis=1, keepdims=True) / 127  # per token
    cw = np.abs(w).max(axis=1, keepdims=True) / 127  # per output row
    xq, wq = np.round(x_int / cx), np.round(w / cw)  # int8 values
    int_part = xq[:, ~outliers] @ wq[:, ~outliers].T  # int32 accumulation in a real kernel
    return int_part * (cx @ cw.T) + x[:, outliers] @ w[:, outliers].T + b


def test_decomposition_by_hand():
    x, w, b = torch.tensor([X]), torch.tensor(W), torch.tensor(B)  # (1, 2, 3)
    qweight = torch.tensor([[0.5, 1.27, -0.25], [2.54, 0.1, 0.70]])  # W on its vector-wise grid, by hand
    from interpipe.quant.fake import quantize_weight

    assert torch.allclose(quantize_weight(w, weight_grid(8)), qweight, atol=1e-6)
    out, dims = int8_linear(x, w, qweight, b, act_grid(), threshold=6.0)
    assert dims.tolist() == [[[False, True, False]]]
    assert torch.allclose(out[0], torch.tensor(EXPECTED), atol=1e-5)
    ref = _numpy_int8(np.asarray(X, dtype=np.float64), np.asarray(W, dtype=np.float64), np.asarray(B), 6.0)
    assert np.allclose(out[0].double().numpy(), ref, atol=1e-5)


def test_quant_linear_runs_llm_int8_per_example_and_counts_the_share():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor(B))
    tokens = TokenMask()
    layer = QuantLinear(lin, "fc", "fc1", weight_grid(8), act_grid(8), tokens, threshold=6.0)
    layer.set_mode("quant")
    quiet = [[1.013, 1.0, -2.54], [0.333, -1.0, 1.27]]  # no outlier: every dimension int8
    pad_outlier = [[1.013, 1.0, -2.54], [0.333, -1.0, 50.0]]  # the outlier sits on a padding token
    x = torch.tensor([X, quiet, pad_outlier])  # (batch 3, pos 2, d_in 3)
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    with tokens.covering(mask):
        out = layer(x)
    assert torch.allclose(out[0].detach(), torch.tensor(EXPECTED), atol=1e-5)
    assert layer.decomposed_share == pytest.approx(1 / 9)  # one dimension of one of three examples
    all_int8 = quantize_activation(x[1], act_grid(8)) @ layer.qweight().t() + lin.bias
    assert torch.allclose(out[1], all_int8.detach(), atol=1e-6)  # the quiet example: pure vector-wise int8
    assert not outlier_dims(x, 6.0, mask)[2].any()  # padding decides nothing


def test_without_outliers_is_vector_wise_int8_and_threshold_above_all_changes_nothing():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 5, 8, generator=g), torch.randn(4, 8, generator=g)
    qw = torch.tensor(np.round(w.numpy() / (np.abs(w.numpy()).max(1, keepdims=True) / 127))
                      * (np.abs(w.numpy()).max(1, keepdims=True) / 127), dtype=torch.float32)
    out, dims = int8_linear(x, w, qw, None, act_grid(), threshold=100.0)
    assert not dims.any()
    cx = x.abs().amax(-1, keepdim=True) / 127  # (2, 5, 1) per token
    assert torch.allclose(out, torch.round(x / cx) * cx @ qw.t(), atol=1e-5)
    full, dims = int8_linear(x, w, qw, None, act_grid(), threshold=1e-6)  # every dimension decomposed
    assert dims.all() and torch.allclose(full, x @ w.t(), atol=1e-5)  # the full-precision product


def test_llm_int8_grid_is_vector_wise_on_every_protocol():
    for protocol in ("paper", "fine"):
        w_spec, a_spec = specs(QuantSettings(methods=["llmint8"], protocol=protocol), "w8a8", "llmint8")
        assert (w_spec.granularity, w_spec.symmetric) == ("per_channel", True)
        assert (a_spec.granularity, a_spec.symmetric) == ("per_token_dynamic", True)
    assert QuantSettings().tag_of("w8a8", "llmint8") == "vectorwise-t6"
    assert QuantSettings(methods=["llmint8"], bits=["w8a8"], export=["llmint8-w8a8"]).export == ["llmint8-w8a8"]
    with pytest.raises(ValueError, match="int8_threshold"):
        QuantSettings(int8_threshold=0.0)


# A planted outlier token: per-tensor static ranges follow it, per-token ranges do not.
TOKENS = [[0.3, -0.2], [100.0, 40.0], [0.25, 0.1]]


def test_per_token_dynamic_keeps_the_tokens_a_per_tensor_range_erases():
    x = torch.tensor(TOKENS)
    static = quantize_activation(x, ActSpec(8, True, "per_tensor_static"), x.min(), x.max())
    # per tensor: scale 100 / 127 ~ 0.787, so |x| < 0.39 rounds to 0; 40 -> 51 steps = 51 * 100 / 127
    assert torch.allclose(static, torch.tensor([[0.0, 0.0], [100.0, 51 * 100 / 127], [0.0, 0.0]]), atol=1e-5)
    dynamic = quantize_activation(x, ActSpec(8, True, "per_token_dynamic"))
    # per token: token 0 scale 0.3/127, -0.2 -> -85 steps; token 2 scale 0.25/127, 0.1 -> 51 steps
    assert torch.allclose(dynamic, torch.tensor([[0.3, -85 * 0.3 / 127], [100.0, 51 * 100 / 127],
                                                 [0.25, 51 * 0.25 / 127]]), atol=1e-6)


def test_act_granularity_overrides_the_protocol():
    s = QuantSettings(act_granularity="per_token_dynamic")
    assert specs(s, "w8a8")[1].granularity == "per_token_dynamic"
    assert specs(s, "w6a6")[0].granularity == "per_channel"  # the protocol's weight grid stays
    assert s.tag_of("w8a8") == "paper-apertoken" and QuantSettings().tag_of("w8a8") == "paper"
    with pytest.raises(ValueError, match="act_granularity"):
        QuantSettings(act_granularity="per_row")
