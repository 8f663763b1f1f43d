"""Tensor type aliases with TransformerLens's dimension names (jaxtyping)."""

from jaxtyping import Float, Int
from torch import Tensor

TokenIds = Int[Tensor, "batch pos"]  # token ids of a padded batch of prompts

__all__ = ["Float", "Int", "Tensor", "TokenIds"]
