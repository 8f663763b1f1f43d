"""Ablations of heads, MLPs and single neurons: zero, mean over a reference set, or resample.

An ablation replaces a component's output on the clean run by a value that carries no
task-specific information: zero; its mean over a reference set (the corrupted prompts, as the ABC
distribution in Wang et al. 2022), position by position; or its value on another reference
prompt (resample ablation; Chan et al. 2022). Layer-, head- and neuron-level ablations follow
"Disentangling Recall and Reasoning" style sweeps. Every set of components is one variant of the
batched engine, so a sweep over all heads, or over all the circuits of a faithfulness curve, runs
in a few forwards.

>>> Component.parse("L2H3"), Component.parse("L1.mlp").name, Component.parse("L0.n7").hook
(Component(kind='head', layer=2, index=3), 'L1.mlp', 'blocks.0.mlp.hook_post')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch, check_head
from interpipe.circuits.engine import Patch, capture, run_variants
from interpipe.circuits.metrics import NormalizedLogitDiff, accuracy, kl_divergence
from interpipe.circuits.patching import task_metric
from interpipe.circuits.results import CircuitResult

from interpipe.settings.circuits import ABLATIONS as KINDS  # noqa: E402 - the allowed values live with the settings
METRICS = ("normalized_logit_diff", "logit_diff", "accuracy", "kl")
_PATTERN = re.compile(r"^L(\d+)(?:H(\d+)|\.mlp|\.n(\d+))$")


@dataclass(frozen=True)
class Component:
    """A head (``L2H3``), an MLP (``L2.mlp``) or one MLP neuron (``L2.n17``)."""

    kind: str  # head | mlp | neuron
    layer: int
    index: int = -1  # head or neuron index

    @property
    def name(self) -> str:
        return {"head": f"L{self.layer}H{self.index}", "mlp": f"L{self.layer}.mlp",
                "neuron": f"L{self.layer}.n{self.index}"}[self.kind]

    @property
    def hook(self) -> str:
        return {"head": f"blocks.{self.layer}.attn.hook_z", "mlp": f"blocks.{self.layer}.hook_mlp_out",
                "neuron": f"blocks.{self.layer}.mlp.hook_post"}[self.kind]

    def patch(self) -> Patch:
        return Patch(self.hook, () if self.kind == "mlp" else (None, self.index))

    @classmethod
    def parse(cls, text: str) -> "Component":
        match = _PATTERN.match(text.strip())
        if not match:
            raise ValueError(f"cannot parse component {text!r}: use L<layer>H<head>, L<layer>.mlp or L<layer>.n<neuron>")
        layer, head, neuron = match.groups()
        if head is not None:
            return cls("head", int(layer), int(head))
        return cls("neuron", int(layer), int(neuron)) if neuron is not None else cls("mlp", int(layer))


def all_components(bridge: Any) -> list[Component]:
    """Every head and every MLP of the model."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    heads = [Component("head", layer, head) for layer in range(n_layers) for head in range(n_heads)]
    return heads + [Component("mlp", layer) for layer in range(n_layers)]


def _check(bridge: Any, component: Component) -> None:
    if component.kind == "head":
        check_head(bridge, component.layer, component.index)
    elif not 0 <= component.layer < bridge.cfg.n_layers:
        raise ValueError(f"{component.name}: layer {component.layer} is out of range (model has {bridge.cfg.n_layers})")


def ablation_sources(bridge: Any, batch: PromptBatch, hooks: Sequence[str], kind: str = "mean", seed: int = 0
                     ) -> dict[str, torch.Tensor]:
    """Replacement values per hook, shaped to broadcast against the clean run's ``[batch, ...]``."""
    if kind not in KINDS:
        raise ValueError(f"ablation kind {kind!r} is not one of {KINDS}")
    ref, _ = capture(bridge, batch.corrupted_tokens, batch.answer_pos, hooks)
    if kind == "zero":
        return {h: torch.zeros_like(a[:1]) for h, a in ref.items()}
    if kind == "resample":
        perm = torch.randperm(batch.size, generator=torch.Generator().manual_seed(seed)).to(batch.answer_pos.device)
        return {h: a[perm] for h, a in ref.items()}
    real = (torch.arange(batch.n_pos, device=batch.answer_pos.device)[None] <= batch.answer_pos[:, None]).float()  # (batch, pos)
    out = {}
    for h, a in ref.items():
        weights = real.reshape(*real.shape, *([1] * (a.ndim - 2)))  # (batch, pos, 1, ...)
        out[h] = ((a * weights).sum(0) / weights.sum(0).clamp_min(1.0))[None]  # (1, pos, ...): per-position mean
    return out


def ablate(bridge: Any, batch: PromptBatch, variants: Sequence[Sequence[Component]], kind: str = "mean",
           seed: int = 0, metric: NormalizedLogitDiff | None = None, memory_mb: float = 512.0) -> torch.Tensor:
    """Run the clean prompts with each variant's components ablated together.

    Returns:
        ``[variant, 4]``: normalised logit difference, mean logit difference, accuracy and KL
        from the clean run (the columns of :data:`METRICS`).
    """
    metric = metric or task_metric(bridge, batch)
    for variant in variants:
        for component in variant:
            _check(bridge, component)
    hooks = sorted({c.hook for v in variants for c in v})
    sources = ablation_sources(bridge, batch, hooks, kind, seed) if hooks else {}
    _, clean_logits = capture(bridge, batch.clean_tokens, batch.answer_pos, [])

    def metrics(logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([metric(logits), metric.raw(logits), accuracy(logits, batch.answer_ids),
                            kl_divergence(logits, clean_logits)], -1)  # (variant, 4)

    patches = [[c.patch() for c in v] for v in variants]
    return run_variants(bridge, batch.clean_tokens, batch.answer_pos, patches, sources, metrics, memory_mb,
                        desc=f"{kind} ablation")


def ablate_heads(bridge: Any, batch: PromptBatch, kind: str = "mean", **kwargs: Any) -> CircuitResult:
    """Ablate each head alone: normalised logit difference ``[layer, head]`` (baseline: clean = 1)."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    out = ablate(bridge, batch, [[Component("head", l, h)] for l in range(n_layers) for h in range(n_heads)], kind, **kwargs)
    return CircuitResult(f"{kind}_ablation_heads", out[:, 0].reshape(n_layers, n_heads), ("layer", "head"), {}, 1.0,
                         {"method": "ablation", "kind": kind, "accuracy": out[:, 2].tolist(), "kl": out[:, 3].tolist()})


def ablate_mlps(bridge: Any, batch: PromptBatch, kind: str = "mean", **kwargs: Any) -> CircuitResult:
    """Ablate each MLP alone: normalised logit difference ``[layer]``."""
    out = ablate(bridge, batch, [[Component("mlp", l)] for l in range(bridge.cfg.n_layers)], kind, **kwargs)
    return CircuitResult(f"{kind}_ablation_mlps", out[:, 0], ("layer",), {}, 1.0,
                         {"method": "ablation", "kind": kind, "accuracy": out[:, 2].tolist(), "kl": out[:, 3].tolist()})


def ablate_neurons(bridge: Any, batch: PromptBatch, layer: int, kind: str = "mean",
                   neurons: Sequence[int] | None = None, **kwargs: Any) -> CircuitResult:
    """Ablate each neuron of one MLP (or the listed ``neurons``) alone: normalised logit difference ``[neuron]``."""
    d_mlp = int(getattr(bridge.cfg, "d_mlp", None) or 4 * bridge.cfg.d_model)
    neurons = list(range(d_mlp)) if neurons is None else [int(n) for n in neurons]
    bad = [n for n in neurons if not 0 <= n < d_mlp]
    if bad:
        raise ValueError(f"neuron indices {bad} are out of range for layer {layer} (d_mlp={d_mlp})")
    out = ablate(bridge, batch, [[Component("neuron", layer, n)] for n in neurons], kind, **kwargs)
    return CircuitResult(f"{kind}_ablation_neurons_L{layer}", out[:, 0], ("neuron",),
                         {"neuron": [str(n) for n in neurons]}, 1.0,
                         {"method": "ablation", "kind": kind, "layer": layer, "neurons": neurons})
