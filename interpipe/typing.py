"""Tensor type aliases with TransformerLens's dimension names (jaxtyping)."""

from jaxtyping import Float, Int
from torch import Tensor

TokenIds = Int[Tensor, "batch pos"]
Logits = Float[Tensor, "batch pos d_vocab"]
Residual = Float[Tensor, "batch pos d_model"]
Pattern = Float[Tensor, "batch head q_pos k_pos"]
TokenScores = Float[Tensor, "batch pos"]

__all__ = ["Float", "Int", "Tensor", "TokenIds", "Logits", "Residual", "Pattern", "TokenScores"]
