"""Settings of the interpretability-under-quantization study (the ``quant_interp`` config group)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("ioi",)  # the head classes (interpipe.circuits.heads) exist for IOI only
EFFECT_METHODS = ("attribution", "exact")  # which z_head patching effects are correlated (exact: models that ran it)


def _default_pairs() -> list[dict[str, Any]]:
    """RTN and OS+ W6A6 of toy and smollm2; the toy's without attribution drift (time budget)."""
    return [{"fp": fp, "quantized": f"{fp}-{setting}", **({"attribution": False} if fp == "toy" else {})}
            for fp in ("toy", "smollm2") for setting in ("rtn-w6a6", "osplus-w6a6")]


@dataclass
class QuantInterpSettings:
    """Settings of the study that compares FP and quantized models' circuits and attributions."""

    pairs: list[dict[str, Any]] = field(default_factory=_default_pairs)  # {fp, quantized[, attribution: false]} each
    task: str = "ioi"  # the circuit task compared
    circuits_root: str = "outputs/circuits"  # <root>/<model>/<model>-<task>/: the circuits stage's outputs
    attribute_root: str = "outputs/attribute"  # <root>/<model>/<method>/: the attribute stage's outputs
    effect_method: str = "attribution"  # z_head denoising effects compared: attribution (every model) | exact
    random_circuits: int = 20  # same-size random circuits scored in the quantized model (the baseline)
    bootstrap_resamples: int = 2000  # resamples of every bootstrap interval
    attribution: bool = True  # compare the attribute stage's token scores and faithfulness too
    memory_mb: float = 512.0  # activation memory per batched forward of the circuit scoring

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
        if self.memory_mb <= 0:
            raise ValueError(f"quant_interp.memory_mb={self.memory_mb} must be > 0")
