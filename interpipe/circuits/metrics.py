"""Task metrics on the answer-position logits: logit difference, its normalised form, accuracy, KL.

The circuit study's main metric is the answer − foil logit difference (Wang et al. 2022), averaged
over prompts and normalised so that the clean run scores 1 and the corrupted run 0:
``(LD(patched) − LD(corrupted)) / (LD(clean) − LD(corrupted))``. Every metric here is a callable
on final-position logits shaped ``[..., batch, d_vocab]`` that reduces the batch axis, so the
batched patching engine can evaluate many patched runs at once.

>>> import torch
>>> logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 3.0]])
>>> logit_diff(logits, torch.tensor([1, 1]), torch.tensor([2, 2]))
tensor([ 1., -2.])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interpipe.stats import N_RESAMPLES, Interval, bootstrap
from interpipe.typing import Float, Int, Tensor


def logit_diff(logits: Float[Tensor, "... batch d_vocab"], answer_ids: Int[Tensor, "batch"],
               foil_ids: Int[Tensor, "batch"]) -> Float[Tensor, "... batch"]:
    """Answer minus foil logit per prompt."""
    shape = logits.shape[:-1]
    answer = torch.gather(logits, -1, answer_ids.expand(shape).unsqueeze(-1)).squeeze(-1)
    foil = torch.gather(logits, -1, foil_ids.expand(shape).unsqueeze(-1)).squeeze(-1)
    return answer - foil


def pairwise_accuracy(ld: np.ndarray, n_resamples: int = N_RESAMPLES) -> Interval:
    """Share of prompts whose answer − foil logit difference is positive ``(prompt,) -> Interval``, with
    its bootstrap interval: the accuracy a logit-difference metric speaks for (answer against one foil,
    chance 0.5), one rule for the circuits study and interpretability under quantization."""
    return bootstrap((np.asarray(ld, dtype=float) > 0).astype(float), n_resamples=n_resamples)


@dataclass
class NormalizedLogitDiff:
    """Mean logit difference rescaled so that clean = 1 and corrupted = 0 (a batch-reducing metric)."""

    answer_ids: Int[Tensor, "batch"]
    foil_ids: Int[Tensor, "batch"]
    clean: float  # mean logit difference of the clean run
    corrupted: float  # mean logit difference of the corrupted run

    def raw(self, logits: Float[Tensor, "... batch d_vocab"]) -> Float[Tensor, "..."]:
        """Mean (unnormalised) logit difference."""
        return logit_diff(logits, self.answer_ids, self.foil_ids).mean(-1)

    def __call__(self, logits: Float[Tensor, "... batch d_vocab"]) -> Float[Tensor, "..."]:
        return (self.raw(logits) - self.corrupted) / (self.clean - self.corrupted)


def accuracy(logits: Float[Tensor, "... batch d_vocab"], answer_ids: Int[Tensor, "batch"]) -> Float[Tensor, "..."]:
    """Fraction of prompts whose top-1 next token is the answer."""
    return (logits.argmax(-1) == answer_ids).float().mean(-1)


def kl_divergence(logits: Float[Tensor, "... batch d_vocab"],
                  reference: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, "..."]:
    """Mean KL(reference ‖ logits) over prompts, in nats (reference: usually the clean run)."""
    ref = torch.log_softmax(reference.float(), -1)
    out = torch.log_softmax(logits.float(), -1)
    return (ref.exp() * (ref - out)).sum(-1).mean(-1)
