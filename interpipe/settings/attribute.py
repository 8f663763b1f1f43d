"""Settings of the attribution study (the ``attribute`` config group)."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("normxlogit", "norm", "logat", "saliency", "grad_x_input", "integrated_gradients",
           "attention", "attention_rollout", "random")
NORM_SOURCES = ("hidden_states0", "word_embeddings")
IG_METHODS = ("adaptive", "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINES = ("zero", "pad", "mask")
OPERATORS = ("mask", "pad", "delete", "mean")  # token removal operators of the faithfulness evaluator
REPLACEMENTS = ("auto",) + OPERATORS
TARGETS = ("predicted", "label")
CAUSAL_TARGETS = ("contrast", "answer")
SCORED_POSITIONS = ("exclude", "rank")
REDUCTIONS = ("default", "l1")
CUE_MASSES = ("standardised", "softmax")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"attribute.{key}={value!r} is not one of {allowed}")


@dataclass
class AttributeSettings:
    """What to attribute, with which methods, and how to evaluate it."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))  # every method on the same inputs
    causal_tasks: list[str] = field(default_factory=lambda: ["ioi", "sva"])  # causal LMs: answer token is the target
    classifier_tasks: list[str] = field(default_factory=lambda: ["sentiment"])  # classifiers: planted cue words
    split: str = "test"  # held-out prompts the model never trained on
    n_examples: int = 32  # per model, split evenly over its tasks; the intervals show what that separates (paper preset: 512)
    batch_size: int = 32  # examples per attribution call
    max_length: int = 128  # longer inputs are an error, never silently truncated
    target: str = "predicted"  # classifiers: predicted class (the paper) or gold label
    # causal LMs: what is attributed and measured. contrast: the answer's logit minus the foil's (the
    # task's competing word: IOI's subject name, SVA's other verb number), as contrastive attribution
    # (Yin & Neubig 2022) does, which is what the prompt tests; answer: the answer's probability
    causal_target: str = "contrast"
    norm_source: str = "hidden_states0"  # x_i^0: HF hidden_states[0] (embedding-layer output), as the official code
    # causal LMs: the predicting (last prompt) position's LogAt is the prediction itself, so it is
    # kept out of ranking and removal as the paper keeps [CLS] out (exclude); rank: ranked like any token
    scored_position: str = "exclude"
    layerwise: bool = True  # NormXLogit with h_i^l for every layer l (logit-lens style curves)
    layerwise_max_layers: int = 0  # evaluate at most this many evenly spaced layers (0: all); deep models cost a pass per layer
    gradient_reduction: str = "default"  # over d_model: L2 for saliency, signed sum for I×G and IG (or: l1 for all, the paper)
    ig_method: str = "adaptive"  # composite Gauss-Legendre, bisected until completeness holds (or Captum's fixed rules)
    ig_steps: int = 8  # adaptive: nodes per sub-interval; fixed rules: nodes in all (the paper: 50)
    ig_tolerance: float = 0.05  # adaptive: stop when |Σ IG − (f(x) − f(b))| <= this × |f(x) − f(b)|
    ig_max_steps: int = 512  # adaptive: at most this many gradient evaluations per example
    ig_n_examples: int = 0  # IG on the first N examples only (0: all); IG is the cost driver on large models
    ig_baseline: str = "zero"  # zero word embeddings; special tokens keep their own embedding (or: pad, mask)
    ig_keep_first: bool = False  # keep position 0 in the baseline (the attention sink of models without BOS)
    ig_internal_batch_size: int = 128  # interpolated sequences per forward/backward
    replacement: str = "auto"  # removal rule: auto = mask for encoders (the paper), mean embedding for causal LMs (least saturated)
    operators: list[str] = field(default_factory=lambda: list(OPERATORS))  # also evaluate under each (operators.csv); []: skip
    operator_methods: list[str] = field(default_factory=lambda: ["normxlogit", "integrated_gradients", "grad_x_input",
                                                                 "saliency", "random"])  # the headline methods; []: every method
    # AOPC removal ratios k over 10..90 %: three by default (each costs two forward passes per method,
    # layer and operator; they pay for the top-k bounds); the paper presets use all nine (0.1, ..., 0.9)
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    # removal of the top k = 1, 2, ..., top_k tokens, AOPC over k (one removal does not saturate the
    # prediction the way 10 % of the tokens does), beside a ceiling (the leave-one-out oracle) and a floor
    # (random rankings) under the same operator: the headline's normalised score; 0 skips all three
    top_k: int = 3
    floor_draws: int = 4  # random rankings per example whose mean is the floor (k = 1 is exact: the mean leave-one-out effect)
    soft_normalised: bool = True  # Soft-NC / Soft-NS of Zhao & Aletras (divided by the fully perturbed input's drop)
    # Soft-NC / Soft-NS guard: an example whose fully perturbed drop is below this (in the target's units:
    # probability, or nats of logit difference under contrast) has nothing to normalise by and is left out (NaN)
    soft_min_drop: float = 0.1
    cue_mass: str = "standardised"  # softmax over z-scored scores (scale-free), or softmax over raw scores (the paper)
    eval_batch_size: int = 256  # perturbed sequences per forward in the evaluator
    n_heatmaps: int = 2  # examples in each method's heatmap (one per task first); figures cost seconds
    seed: int = 0  # random baseline and soft-perturbation draws

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError(f"attribute.methods is empty: choose from {METHODS}")
        from interpipe.data.prepare import CAUSAL_TASKS

        for key, tasks, allowed in (("causal_tasks", self.causal_tasks, CAUSAL_TASKS),
                                    ("classifier_tasks", self.classifier_tasks, ("sentiment",))):
            unknown = [t for t in tasks if t not in allowed]
            if unknown:
                raise ValueError(f"attribute.{key} names unknown tasks {unknown}: use {list(allowed)}")
        for method in list(self.methods) + list(self.operator_methods):
            _check_choice("methods", method, METHODS)
        for op in self.operators:
            _check_choice("operators", op, OPERATORS)
        _check_choice("target", self.target, TARGETS)
        _check_choice("causal_target", self.causal_target, CAUSAL_TARGETS)
        _check_choice("norm_source", self.norm_source, NORM_SOURCES)
        _check_choice("scored_position", self.scored_position, SCORED_POSITIONS)
        _check_choice("gradient_reduction", self.gradient_reduction, REDUCTIONS)
        _check_choice("cue_mass", self.cue_mass, CUE_MASSES)
        _check_choice("ig_method", self.ig_method, IG_METHODS)
        _check_choice("ig_baseline", self.ig_baseline, BASELINES)
        _check_choice("replacement", self.replacement, REPLACEMENTS)
        for key in ("n_examples", "batch_size", "max_length", "ig_steps", "ig_max_steps", "ig_internal_batch_size",
                    "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"attribute.{key}={getattr(self, key)} must be >= 1")
        if self.ig_method == "adaptive" and self.ig_max_steps < self.ig_steps:
            raise ValueError(f"attribute.ig_max_steps={self.ig_max_steps} is below ig_steps={self.ig_steps}: "
                             f"the adaptive rule needs room for at least one sub-interval")
        if not 0.0 < self.ig_tolerance < 1.0:
            raise ValueError(f"attribute.ig_tolerance={self.ig_tolerance} must be a fraction in (0, 1)")
        if self.ig_n_examples < 0:
            raise ValueError(f"attribute.ig_n_examples={self.ig_n_examples} must be >= 0 (0 means every example)")
        if self.layerwise_max_layers < 0:
            raise ValueError(f"attribute.layerwise_max_layers={self.layerwise_max_layers} must be >= 0 (0 means every layer)")
        if self.top_k < 0 or self.floor_draws < 1:
            raise ValueError(f"attribute.top_k={self.top_k} must be >= 0 (0 skips the oracle) and "
                             f"attribute.floor_draws={self.floor_draws} >= 1")
        if self.soft_min_drop < 0:
            raise ValueError(f"attribute.soft_min_drop={self.soft_min_drop} must be >= 0")
        if self.n_heatmaps < 0:
            raise ValueError(f"attribute.n_heatmaps={self.n_heatmaps} must be >= 0")
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise ValueError(f"attribute.ratios={list(self.ratios)} must be non-empty fractions in (0, 1)")
