"""Settings of the interpretability-under-quantization study (the ``quant_interp`` config group)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("ioi",)  # the head classes (interpipe.circuits.heads) exist for IOI only
EFFECT_METHODS = ("attribution", "exact")  # which z_head patching effects are correlated (exact: models that ran it)


# the default pipeline's setting per FP model: where its quantized model still solves IOI (SmolLM2 loses it at W6A6)
DEFAULT_BITS = {"toy": "w6a6", "smollm2": "w8a8"}


def _default_pairs() -> list[dict[str, Any]]:
    """RTN and OS+ of toy (W6A6) and smollm2 (W8A8); the toy's without attribution drift (time budget)."""
    return [{"fp": fp, "quantized": f"{fp}-{method}-{bits}", **({"attribution": False} if fp == "toy" else {})}
            for fp, bits in DEFAULT_BITS.items() for method in ("rtn", "osplus")]


@dataclass
class QuantInterpSettings:
    """Settings of the study that compares FP and quantized models' circuits and attributions."""

    pairs: list[dict[str, Any]] = field(default_factory=_default_pairs)  # {fp, quantized[, attribution: false]} each
    task: str = "ioi"  # the circuit task compared
    circuits_root: str = "outputs/circuits"  # <root>/<model>/<model>-<task>/: the circuits stage's outputs
    attribute_root: str = "outputs/attribute"  # <root>/<model>/<method>/: the attribute stage's outputs
    effect_method: str = "attribution"  # z_head denoising effects compared: attribution (every model) | exact
    random_circuits: int = 10  # same-size random circuits scored in the quantized model (the baseline)
    bootstrap_resamples: int = 2000  # resamples of every bootstrap interval
    attribution: bool = True  # compare the attribute stage's token scores and faithfulness too
    memory_mb: float = 512.0  # activation memory per batched forward of the circuit scoring
    min_pairwise_accuracy: float = 0.5  # solved: the quantized model's pairwise IOI accuracy interval lies above (chance)
    min_class_heads: int = 5  # a head class's survival gets an interval only with this many FP heads (verdict.py)

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("quant_interp.pairs is empty: list at least one {fp: <model>, quantized: <model>}")
        for i, pair in enumerate(self.pairs):
            keys = set(dict(pair))
            if not {"fp", "quantized"} <= keys <= {"fp", "quantized", "attribution"}:
                raise ValueError(f"quant_interp.pairs[{i}]={dict(pair)} must have the keys fp and quantized and "
                                 f"optionally attribution (e.g. {{fp: toy, quantized: toy-rtn-w6a6, attribution: false}})")
            empty = [k for k in ("fp", "quantized") if not str(pair[k] or "").strip()]
            if empty:
                raise ValueError(f"quant_interp.pairs[{i}].{empty[0]} is empty: name a folder under paths.models")
        if self.task not in TASKS:
            raise ValueError(f"quant_interp.task={self.task!r} is not one of {TASKS}")
        if self.effect_method not in EFFECT_METHODS:
            raise ValueError(f"quant_interp.effect_method={self.effect_method!r} is not one of {EFFECT_METHODS}")
        if self.random_circuits < 0:
            raise ValueError(f"quant_interp.random_circuits={self.random_circuits} must be >= 0 (0: no baseline)")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"quant_interp.bootstrap_resamples={self.bootstrap_resamples} must be >= 100")
        if self.min_pairwise_accuracy >= 1.0:
            raise ValueError(f"quant_interp.min_pairwise_accuracy={self.min_pairwise_accuracy} must be < 1, or no pair "
                             f"can be solved (0.5: chance between the two names)")
        if self.min_class_heads < 2:
            raise ValueError(f"quant_interp.min_class_heads={self.min_class_heads} must be >= 2 (an interval needs two heads)")
        if self.memory_mb <= 0:
            raise ValueError(f"quant_interp.memory_mb={self.memory_mb} must be > 0")
