"""LLM.int8(): vector-wise int8 matrix multiplication with a mixed-precision decomposition.

Dettmers, Lewis, Belkada and Zettlemoyer, *LLM.int8(): 8-bit Matrix Multiplication for Transformers
at Scale* (NeurIPS 2022, arXiv 2208.07339; reference code: bitsandbytes). A linear ``Y = X W^T + b``
with ``X`` ``[tokens, d_in]`` and ``W`` ``[d_out, d_in]`` is computed in two parts:

1. **Vector-wise quantization** (Section 3.1): every row of ``X`` (a token) gets its own absmax scale
   ``c_x = max_j |X_tj| / 127`` and every row of ``W`` (an output feature: a column of the paper's
   ``W[in, out]``) its own ``c_w = max_j |W_oj| / 127``; the int8 product is rescaled by the outer
   product ``c_x c_w^T``.
2. **Mixed-precision decomposition** (Section 3.2): the input feature dimensions ``O`` in which any
   ``|X_tj|`` exceeds the threshold ``alpha`` (6.0 in the paper) are multiplied in 16 bits::

       Y = X[:, O] W[:, O]^T  +  c_x c_w^T * (Q(X[:, ~O]) Q(W[:, ~O])^T)  +  b

   where ``Q`` rounds to the int8 grid. The outlier dimensions are few (the paper: about 0.1 % of
   the values stay in 16 bits) but hold the large-magnitude features that per-token scales alone
   cannot represent, so the int8 part keeps its precision.

Here the arithmetic is fake quantization (:mod:`~interpipe.quant.fake`: the int8 values dequantized
in floating point), which gives the same product up to the accumulator's precision. Choices where
the paper is silent or the reference code differs (all in ``docs/quantization.md``):

- ``O`` is found per *example* (a sequence's non-padding tokens), the paper's "hidden state of the
  current matmul" at batch size 1, so results do not depend on how texts are batched or padded; a
  flattened ``[tokens, d_in]`` input without a token mask is one matrix, as in the paper.
- ``c_x`` is the absmax of the token's non-outlier dimensions (the outlier columns are removed
  before quantizing, as bitsandbytes zeroes them); ``c_w`` is the absmax of the whole weight row, as
  bitsandbytes stores one int8 weight with one scale per row.
- The 16-bit part multiplies the full-precision weight columns, as the paper writes it
  (bitsandbytes, which keeps only the int8 weight, dequantizes those columns instead).

>>> import torch
>>> x = torch.tensor([[[1.0, 8.0], [0.5, 1.0]]])  # (batch, pos, d_in): dimension 1 has an outlier
>>> outlier_dims(x, 6.0).tolist()
[[[False, True]]]
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Bool

from interpipe.quant.calibrate import as_tokens
from interpipe.quant.fake import ActSpec, WeightSpec, outlier_columns, quantize_activation
from interpipe.typing import Float, Tensor

PAPER_THRESHOLD = 6.0  # alpha of the paper: "magnitude of at least 6"


def as_examples(x: Float[Tensor, "*rows d_in"], mask: Bool[Tensor, "batch pos"] | None
                ) -> tuple[Float[Tensor, "batch pos d_in"], Bool[Tensor, "batch pos"] | None]:
    """``x`` as ``(batch, pos, d_in)`` with its mask (None when ``x`` is one unmasked matrix)."""
    x3 = as_tokens(x, mask)  # OPT's flattened (batch * pos, d) back to (batch, pos, d)
    if x3.ndim == 3 and mask is not None and x3.shape[:2] == mask.shape:
        return x3, mask.to(x3.device)
    return x3.reshape(1, -1, x3.shape[-1]), None  # (1, rows, d_in): one matrix, every row counts


def outlier_dims(x: Float[Tensor, "*rows d_in"], threshold: float = PAPER_THRESHOLD,
                 mask: Bool[Tensor, "batch pos"] | None = None) -> Bool[Tensor, "batch 1 d_in"]:
    """The decomposed input dimensions of each example: any non-padding ``|x|`` above ``threshold``.

    Returns ``(batch, 1, d_in)`` (``(1, 1, d_in)`` for one unmasked matrix).
    """
    x3, m = as_examples(x, mask)
    return outlier_columns(x3, threshold, m)  # (batch, 1, d_in)


def int8_linear(x: Float[Tensor, "*rows d_in"], weight: Float[Tensor, "d_out d_in"],
                qweight: Float[Tensor, "d_out d_in"], bias: Float[Tensor, "d_out"] | None, a_spec: ActSpec,
                threshold: float = PAPER_THRESHOLD, mask: Bool[Tensor, "batch pos"] | None = None,
                ) -> tuple[Float[Tensor, "*rows d_out"], Bool[Tensor, "batch 1 d_in"]]:
    """LLM.int8()'s ``Y = X_O W_O^T + dequant(Q(X_~O) Q(W)_~O^T) + b`` and the decomposed dimensions.

    ``qweight`` is ``weight`` on its vector-wise grid (one scale per output row, :func:`weight_grid`),
    ``a_spec`` the per-token activation grid; the outlier columns of ``x`` are computed with the
    full-precision ``weight``, the rest on the grids. Returns the output (``x``'s shape with ``d_out``
    last) and the ``(batch, 1, d_in)`` decomposed dimensions.
    """
    x3, m = as_examples(x, mask)
    dims = outlier_dims(x3, threshold, m)  # (batch, 1, d_in)
    x_int = x3.masked_fill(dims, 0.0)  # (batch, pos, d_in): the int8 part, outlier columns removed
    x_fp = x3 - x_int  # (batch, pos, d_in): only the outlier columns, in full precision
    out = F.linear(quantize_activation(x_int, a_spec), qweight, bias)  # (batch, pos, d_out): int8 part (+ b)
    out = out + F.linear(x_fp, weight)  # (batch, pos, d_out): + the 16-bit part
    return out.reshape(*x.shape[:-1], weight.shape[0]), dims  # (*rows, d_out)


def weight_grid(bits: int = 8) -> WeightSpec:
    """The vector-wise weight grid: symmetric absmax, one scale per output row (the paper's ``c_w``)."""
    return WeightSpec(bits, symmetric=True, granularity="per_channel")


def act_grid(bits: int = 8) -> ActSpec:
    """The vector-wise activation grid: symmetric absmax, one scale per token (the paper's ``c_x``)."""
    return ActSpec(bits, symmetric=True, granularity="per_token_dynamic")


__all__ = ["PAPER_THRESHOLD", "act_grid", "int8_linear", "outlier_dims", "weight_grid"]
