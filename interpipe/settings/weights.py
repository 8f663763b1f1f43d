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
    checkpoint_minutes: float = 10.0  # wall-clock minutes between resumable checkpoints; 0 = after every step

    def __post_init__(self) -> None:
        _positive("bigram", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                  max_successors=self.max_successors)
        if self.l0_lambda < 0:
            raise ValueError(f"weights.bigram.l0_lambda={self.l0_lambda} must be >= 0")
        if self.checkpoint_minutes < 0:
            raise ValueError(f"weights.bigram.checkpoint_minutes={self.checkpoint_minutes} must be >= 0 (0: after every step)")
        if self.temperature_growth < 1:
            raise ValueError(f"weights.bigram.temperature_growth={self.temperature_growth} must be >= 1")
        if not 0 < self.undecided_stop < 1:
            raise ValueError(f"weights.bigram.undecided_stop={self.undecided_stop} must be in (0, 1)")
        if self.prune_minimum < 1 or self.weight_decay < 0:
            raise ValueError(f"weights.bigram.prune_minimum={self.prune_minimum} must be >= 1 and "
                             f"weights.bigram.weight_decay={self.weight_decay} >= 0")


@dataclass
class LNFreeSettings:
    """Baroni et al. 2025: fine-tune while freezing each norm's scale (LayerNorm std, RMSNorm RMS) in turn.

    Order (docs/layernorm_removal.md): MLP norms, the attention norm's q/k use, its v use, the final
    norm, then the special positions' own scales. Defaults: the toy on two CPU cores."""

    start_step: int = 10  # plain fine-tuning steps before the first freeze (paper: 20)
    gap_mlp: int = 4  # steps between two MLP-norm events (paper: 2; the small toy needs more per norm)
    gap_qk: int = 4  # steps between two attention-norm q/k events (paper: 2)
    gap_v: int = 4  # steps between two attention-norm v events (paper: 3)
    gap_special: int = 4  # steps from the final norm to each special position's release (paper: 12 to position 0)
    release_steps: int = 1  # steps over which a special position's own scale gives way to the shared one (geometrically); 1 = at once (official)
    norms_per_step: int = 1  # norms of one phase frozen together (deep models: several per event)
    split_qkv: bool = True  # freeze the attention norm's q/k and v uses at separate steps (official)
    extra_steps: int = 30  # recovery steps after the last event (paper: ~184)
    batch_size: int = 16  # rows per step
    pack: int = 0  # 0: one text per row (padded); N: texts joined by EOS into rows of N tokens (official: 1024)
    lr: float = 1e-3  # peak AdamW learning rate (paper: 6e-4; the short toy schedule needs a high one)
    min_lr: float = 5e-4  # cosine decay's end (paper: 3e-4)
    warmup_steps: int = 5  # linear warm-up to lr (paper: 20)
    weight_decay: float = 0.01  # AdamW weight decay (official)
    grad_clip: float = 1.0  # gradient-norm clipping (official); 0 = none
    aux_special_factor: float = 1.0  # the special positions' tokens count this many times in the auxiliary loss (1: as every token, official)
    aux_weight: float = 0.0  # auxiliary loss keeping each token's scale near the mean (paper variants 0.1/0.03/0.01); 0 = off
    ema: float = 0.9  # moving-average factor of each norm's measured scale
    first_token: Optional[str] = None  # token put at position 0 of every text and prompt (official GPT-2 run: <|endoftext|>); None = the tokenizer's own rule
    scale_stat: str = "mean"  # the shared frozen scale: mean (official) | quantile | auto (chosen by the frozen-only CE on the calibration texts)
    scale_quantile: float = 0.9  # the quantile of the tokens' scales with scale_stat=quantile
    auto_quantiles: list[float] = field(default_factory=lambda: [0.75, 0.9, 0.95, 0.99])  # candidates beside the mean with scale_stat=auto
    outlier_factor: float = 10.0  # a position whose mean scale is this many times the median at some norm is special
    max_special: int = 4  # at most this many special positions (position 0 always, outliers by size)
    big_eps: float = 1e12  # norm epsilon of the saved LN-free model: sqrt(var + eps) ~ sqrt(eps), no normalisation
    max_train_texts: int = 0  # corpus texts to fine-tune on; 0 = all
    max_tokens: int = 0  # tokens kept of each fine-tuning text (pack = 0); 0 = whole texts
    max_eval_texts: int = 256  # held-out corpus texts for the CE; 0 = all
    checkpoint_minutes: float = 10.0  # wall-clock minutes between resumable checkpoints
    control: bool = True  # also fine-tune the same steps with the norms kept: separates removal from extra training
    n_calibration: int = 256  # corpus texts whose scales set the frozen-without-fine-tuning baseline and the outliers
    tasks: Optional[list[str]] = None  # causal tasks evaluated before/after; None = every prepared one
    task_prompts: int = 0  # test prompts per task for accuracy and DLA (before/after); 0 = all for accuracy, 32 for DLA
    patching_prompts: int = 16  # IOI prompts for attribution vs exact patching (z by head, mlp_out by layer); 0 = skip
    recovered_within: float = 0.3  # recovered: the LN-free CE's upper interval end within this many nats of the control's (the report's rule)
    on_divergence: str = "stop"  # stop: a non-finite loss stops the stage (checkpoint kept); report: the result says where

    def __post_init__(self) -> None:
        _positive("lnfree", gap_mlp=self.gap_mlp, gap_qk=self.gap_qk, gap_v=self.gap_v, gap_special=self.gap_special,
                  release_steps=self.release_steps,
                  batch_size=self.batch_size, lr=self.lr, big_eps=self.big_eps, checkpoint_minutes=self.checkpoint_minutes,
                  norms_per_step=self.norms_per_step, n_calibration=self.n_calibration, max_special=self.max_special,
                  recovered_within=self.recovered_within)
        if self.max_tokens < 0 or self.max_tokens == 1 or self.pack < 0 or self.pack == 1:
            raise ValueError(f"weights.lnfree.max_tokens={self.max_tokens} and weights.lnfree.pack={self.pack} "
                             f"must be 0 or >= 2")
        for key in ("start_step", "extra_steps", "warmup_steps", "patching_prompts", "task_prompts"):
            if getattr(self, key) < 0:
                raise ValueError(f"weights.lnfree.{key}={getattr(self, key)} must be >= 0")
        for key in ("min_lr", "weight_decay", "grad_clip", "aux_weight", "aux_special_factor"):
            if getattr(self, key) < 0:
                raise ValueError(f"weights.lnfree.{key}={getattr(self, key)} must be >= 0")
        if self.min_lr > self.lr:
            raise ValueError(f"weights.lnfree.min_lr={self.min_lr} must be <= weights.lnfree.lr={self.lr}")
        if self.on_divergence not in ("stop", "report"):
            raise ValueError(f"weights.lnfree.on_divergence={self.on_divergence!r} must be 'stop' or 'report'")
        if self.scale_stat not in ("mean", "quantile", "auto"):
            raise ValueError(f"weights.lnfree.scale_stat={self.scale_stat!r} must be 'mean', 'quantile' or 'auto'")
        for key, values in (("scale_quantile", [self.scale_quantile]), ("auto_quantiles", list(self.auto_quantiles))):
            if not all(0 < q < 1 for q in values):
                raise ValueError(f"weights.lnfree.{key}={values if key == 'auto_quantiles' else values[0]} must lie "
                                 f"in (0, 1): a quantile of the tokens' scales")
        if self.first_token is not None and not self.first_token:
            raise ValueError("weights.lnfree.first_token is empty: name a token (e.g. '<|endoftext|>') or use null")
        if self.outlier_factor <= 1:
            raise ValueError(f"weights.lnfree.outlier_factor={self.outlier_factor} must be > 1")
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
