"""Settings of the weight-level studies (the ``weights`` config group).

Defaults are the embedded pipeline's small sizes (all three studies in about a minute on two CPU
cores with the toy model); ``conf/experiment/weights_*.yaml`` hold paper-scale values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from interpipe.components import Component

STUDIES = ("talking_heads", "bigram", "lnfree")


def _positive(group: str, **values) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"weights.{group}.{key}={value} must be > 0")


@dataclass
class TalkingHeadsSettings:
    """Merullo et al. 2024: SVD components, composition scores, inhibition, Laundry List edits."""

    n_components: int = 8  # top singular components per head that are scored (d_head=32 on the toy)
    top_channels: int = 20  # strongest sender->receiver component channels listed
    receiver: Optional[str] = None  # receiver (mover) head, e.g. "L3H1"; None = the head attending most to the answer
    inhibition_components: int = 2  # top components per sender head removed for the data-based score (one forward each)
    max_senders: int = 0  # sender components scored on data (strongest weight-based Q-composition first); 0 = all
    n_inhibition_prompts: int = 32  # selection prompts the inhibition scores are measured on (the first ones)
    edit_candidates: int = 2  # components with the largest inhibition scores tried as edits
    edit_scales: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 3.0])  # alpha grid; 1 = no edit (wins ties)
    select_lengths: list[int] = field(default_factory=lambda: [6, 7, 8])  # lengths of the selection prompts (the toy trains on 2-5)
    failing_accuracy: float = 0.8  # selection lengths below this unedited accuracy are the failing ones the edit is chosen at
    n_select: int = 48  # selection prompts, spread over select_lengths (own generation seed)
    test_lengths: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])  # held-out lengths accuracy is reported at
    n_test_per_length: int = 32  # held-out prompts per length (another seed; no key shared with selection or training)
    batch_size: int = 64  # prompts per forward pass

    def __post_init__(self) -> None:
        _positive("talking_heads", n_components=self.n_components, top_channels=self.top_channels,
                  inhibition_components=self.inhibition_components,
                  n_inhibition_prompts=self.n_inhibition_prompts, edit_candidates=self.edit_candidates,
                  n_select=self.n_select, n_test_per_length=self.n_test_per_length, batch_size=self.batch_size)
        if not 0 < self.failing_accuracy <= 1:
            raise ValueError(f"weights.talking_heads.failing_accuracy={self.failing_accuracy} must be in (0, 1]")
        if self.max_senders < 0:
            raise ValueError(f"weights.talking_heads.max_senders={self.max_senders} must be >= 0 (0 = all)")
        if not self.edit_scales or any(s < 0 for s in self.edit_scales):
            raise ValueError(f"weights.talking_heads.edit_scales={self.edit_scales} must be a non-empty list of scales >= 0")
        if 1.0 not in self.edit_scales:
            raise ValueError(f"weights.talking_heads.edit_scales={self.edit_scales} must contain 1.0 (no edit), so an edit "
                             f"is applied only where it beats the unedited model")
        for key in ("select_lengths", "test_lengths"):
            lengths = getattr(self, key)
            if not lengths or any(n < 2 for n in lengths):
                raise ValueError(f"weights.talking_heads.{key}={lengths}: a non-empty list of list lengths >= 2")
        if self.receiver is not None:
            self._check_receiver()

    def _check_receiver(self) -> None:
        """``receiver`` names a head in the one textual form of :class:`Component`: ``L3H1``."""
        try:
            head = Component.parse(self.receiver)
        except ValueError as exc:
            raise ValueError(f"weights.talking_heads.receiver={self.receiver!r}: {exc}; or null") from None
        if head.kind != "head":
            raise ValueError(f"weights.talking_heads.receiver={self.receiver!r} must be an attention head (e.g. L3H1), "
                             f"not {head.kind}")


@dataclass
class BigramSettings:
    """Chang & Bergen 2025: continuous-sparsification masks trained toward bigram predictions."""

    steps: int = 300  # cap on mask-training steps; training stops earlier once undecided_stop is reached (paper: 15k cap)
    batch_size: int = 16  # texts per step (paper: 32)
    lr: float = 0.1  # AdamW on mask logits; high so a few hundred steps decide (paper: 5e-5 over 15k steps)
    weight_decay: float = 0.01  # AdamW weight decay on the mask logits (the official value)
    l0_lambda: float = 1.0  # weight of the L0 term (sweep it: experiment=sweep_bigram, paper {0, 1, 10, 100, 500})
    mask_init: float = 0.0  # initial mask logit; sigmoid(0) = 0.5 as in the paper
    temperature_growth: float = 1.02  # beta *= this each step (paper 1.001 per step over 15k: the same shape, compressed)
    undecided_stop: float = 0.01  # stop once fewer than this fraction of entries has sigmoid(beta s) in [0.1, 0.9] (official 1 %)
    prune_minimum: int = 2  # bigram pairs seen fewer times are pruned, their context backs off to unigrams (official 2)
    max_successors: int = 256  # successors kept per token in the bigram table (exact when >= vocab)
    max_train_texts: int = 0  # corpus texts used to count bigrams and train; 0 = all
    max_eval_texts: int = 256  # held-out corpus texts for surprisal and ablation; 0 = all
    checkpoint_every: int = 100  # steps between resumable checkpoints

    def __post_init__(self) -> None:
        _positive("bigram", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                  max_successors=self.max_successors, checkpoint_every=self.checkpoint_every)
        if self.l0_lambda < 0:
            raise ValueError(f"weights.bigram.l0_lambda={self.l0_lambda} must be >= 0")
        if self.temperature_growth < 1:
            raise ValueError(f"weights.bigram.temperature_growth={self.temperature_growth} must be >= 1")
        if not 0 < self.undecided_stop < 1:
            raise ValueError(f"weights.bigram.undecided_stop={self.undecided_stop} must be in (0, 1)")
        if self.prune_minimum < 1 or self.weight_decay < 0:
            raise ValueError(f"weights.bigram.prune_minimum={self.prune_minimum} must be >= 1 and "
                             f"weights.bigram.weight_decay={self.weight_decay} >= 0")


@dataclass
class LNFreeSettings:
    """Baroni et al. 2025: fine-tune while freezing each norm's scale (LayerNorm std, RMSNorm RMS) in turn."""

    start_step: int = 10  # steps of plain fine-tuning before the first LN is frozen (paper: 20)
    gap: int = 4  # steps between freezing two LNs (paper: 2 for GPT-2 small)
    extra_steps: int = 30  # fine-tuning steps after the last LN is frozen
    batch_size: int = 16  # texts per step
    lr: float = 1e-3  # AdamW learning rate of the fine-tuning (the short toy schedule needs a high one)
    ema: float = 0.9  # moving-average factor of each LN's measured std before it is frozen
    scale_stat: str = "mean"  # per-forward statistic of the real tokens' scales that is averaged: mean | max
    big_eps: float = 1e12  # LN epsilon of the saved model: sqrt(var + eps) ~ sqrt(eps), i.e. no normalisation
    max_train_texts: int = 0  # corpus texts to fine-tune on; 0 = all
    max_tokens: int = 0  # tokens kept of each fine-tuning text (its start, BOS included); 0 = whole texts
    max_eval_texts: int = 256  # held-out corpus texts for the CE loss; 0 = all
    checkpoint_every: int = 25  # steps between resumable checkpoints
    control: bool = True  # also fine-tune the same steps with LN kept: separates LN removal from extra training
    norms_per_step: int = 1  # norms frozen together at each freezing step (deep models: several per step)
    n_calibration: int = 256  # corpus texts whose real-token norm scales set the no-fine-tuning baseline
    tasks: Optional[list[str]] = None  # causal tasks evaluated before/after; None = every prepared one
    first_token_scale: str = "auto"  # position 0 frozen on its own scale, merged over extra_steps: auto | always | never
    first_token_outlier: float = 10.0  # auto turns it on when position 0's mean scale is this many times the others'

    def __post_init__(self) -> None:
        _positive("lnfree", gap=self.gap, batch_size=self.batch_size, lr=self.lr, big_eps=self.big_eps,
                  checkpoint_every=self.checkpoint_every, norms_per_step=self.norms_per_step,
                  n_calibration=self.n_calibration)
        if self.max_tokens < 0 or self.max_tokens == 1:
            raise ValueError(f"weights.lnfree.max_tokens={self.max_tokens} must be 0 (whole texts) or >= 2")
        if self.start_step < 0 or self.extra_steps < 0:
            raise ValueError("weights.lnfree.start_step and weights.lnfree.extra_steps must be >= 0")
        if self.first_token_scale not in ("auto", "always", "never"):
            raise ValueError(f"weights.lnfree.first_token_scale={self.first_token_scale!r} must be auto, always or never")
        if self.first_token_scale != "never" and self.extra_steps < 1:
            raise ValueError("weights.lnfree.extra_steps must be >= 1 when first_token_scale is auto/always: the first "
                             "position's scale is merged into the shared one over the extra steps")
        if self.scale_stat not in ("mean", "max"):
            raise ValueError(f"weights.lnfree.scale_stat={self.scale_stat!r} must be 'mean' or 'max'")
        from interpipe.data.prepare import CAUSAL_TASKS

        unknown = [t for t in (self.tasks or []) if t not in CAUSAL_TASKS]
        if unknown:
            raise ValueError(f"weights.lnfree.tasks names unknown tasks {unknown}: use {list(CAUSAL_TASKS)}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"weights.lnfree.ema={self.ema} must be in [0, 1)")


@dataclass
class WeightsSettings:
    """The ``weights`` group: which study this execution runs, and each study's settings."""

    study: str = "talking_heads"  # talking_heads | bigram | lnfree (dvc.yaml runs each)
    batch_size: int = 64  # evaluation batch size
    talking_heads: TalkingHeadsSettings = field(default_factory=TalkingHeadsSettings)
    bigram: BigramSettings = field(default_factory=BigramSettings)
    lnfree: LNFreeSettings = field(default_factory=LNFreeSettings)

    def __post_init__(self) -> None:
        if self.study not in STUDIES:
            raise ValueError(f"weights.study={self.study!r} is not one of {STUDIES}")
        _positive("", batch_size=self.batch_size)
