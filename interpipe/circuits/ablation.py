"""Ablations of heads, MLPs and single neurons: zero, mean over a reference set, or resample.

An ablation replaces a component's output on the clean run by a value that carries no
task-specific information: zero; its mean over a reference set aligned by template (the corrupted
prompts, as the ABC distribution in Wang et al. 2022: each prompt gets, at every position, the mean
over the reference prompts of its own template and length, so the mean at S2's position is the
mean over S2-role tokens); or its value on another reference prompt (resample ablation; Chan et
al. 2022). A head is ablated at its output ``hook_z`` at **every** position; an MLP at
``hook_mlp_out`` at every position. Layer-, head- and neuron-level ablations follow
"Disentangling Recall and Reasoning" style sweeps. Every set of components is one variant of the
batched engine, so a sweep over all heads, or over all the circuits of a faithfulness curve, runs
in a few forwards.

Components are :class:`interpipe.components.Component` values (re-exported here).

>>> Component.parse("L2H3"), Component.parse("L1.mlp").name, hook_of(Component.parse("L0.n7"))
(Component(kind='head', layer=2, index=3), 'L1.mlp', 'blocks.0.mlp.hook_post')
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interpipe.circuits.bridge import PromptBatch, check_head
from interpipe.circuits.engine import Patch, capture, run_variants
from interpipe.circuits.metrics import NormalizedLogitDiff, accuracy, kl_divergence
from interpipe.circuits.patching import task_metric
from interpipe.circuits.results import CircuitResult
from interpipe.components import Component
from interpipe.typing import Float, Tensor

from interpipe.settings.circuits import ABLATIONS as KINDS  # noqa: E402 - the allowed values live with the settings
METRICS = ("normalized_logit_diff", "logit_diff", "accuracy", "kl")


def hook_of(component: Component) -> str:
    """The bridge hook an ablation of ``component`` replaces: ``hook_z`` (heads), ``hook_mlp_out``
    (MLPs) or the MLP's ``hook_post`` (neurons)."""
    return {"head": f"blocks.{component.layer}.attn.hook_z", "mlp": f"blocks.{component.layer}.hook_mlp_out",
            "neuron": f"blocks.{component.layer}.mlp.hook_post"}[component.kind]


def patch_of(component: Component) -> Patch:
    """The engine's patch of ``component``: its hook, at its head or neuron index (the whole output for an MLP)."""
    return Patch(hook_of(component), () if component.kind == "mlp" else (None, component.index))


def all_components(bridge: Any) -> list[Component]:
    """Every head and every MLP of the model."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    heads = [Component.head(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    return heads + [Component.mlp(layer) for layer in range(n_layers)]


def _check(bridge: Any, component: Component) -> None:
    if component.kind == "head":
        check_head(bridge, component.layer, component.index)
    elif not 0 <= component.layer < bridge.cfg.n_layers:
        raise ValueError(f"{component.name}: layer {component.layer} is out of range (model has {bridge.cfg.n_layers})")


def aligned_means(reference: Float[Tensor, "ref ref_pos ..."], reference_groups: Sequence[str],
                  groups: Sequence[str], n_pos: int) -> Float[Tensor, "batch n_pos ..."]:
    """Per prompt, the mean of ``reference`` over the reference prompts of its template group, position by position.

    A group fixes the template and the token length, so position ``p`` of every member plays the
    same role (S2 in IOI is one position of one template): the mean at ``p`` mixes only tokens of that
    role. Positions past ``reference``'s end are zero (they lie after every answer position).

    >>> ref = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])
    >>> aligned_means(ref, ["a", "a", "b"], ["b", "a"], 2).tolist()
    [[10.0, 20.0], [2.0, 3.0]]
    """
    missing = sorted(set(groups) - set(reference_groups))
    if missing:
        raise ValueError(f"no reference prompt in template group(s) {missing}: the mean ablation needs corrupted "
                         f"prompts of every template and length of the batch")
    means = {}
    for g in set(groups):
        rows = torch.tensor([i for i, r in enumerate(reference_groups) if r == g], device=reference.device)
        means[g] = reference[rows].mean(0)  # (ref_pos, ...)
    out = torch.stack([means[g] for g in groups])  # (batch, ref_pos, ...)
    if out.shape[1] >= n_pos:
        return out[:, :n_pos]
    pad = torch.zeros(out.shape[0], n_pos - out.shape[1], *out.shape[2:], dtype=out.dtype, device=out.device)
    return torch.cat([out, pad], 1)  # (batch, pos, ...)


def ablation_sources(bridge: Any, batch: PromptBatch, hooks: Sequence[str], kind: str = "mean", seed: int = 0
                     ) -> dict[str, torch.Tensor]:
    """Replacement values per hook, shaped to broadcast against the clean run's ``[batch, ...]``.

    ``mean``: per prompt, the mean over the reference (corrupted) prompts of its template group, at
    every position (:func:`aligned_means`; Wang et al.'s template-aligned mean over the ABC
    distribution); ``resample``: another prompt's corrupted activation (a seeded permutation within
    the batch); ``zero``: zeros.
    """
    if kind not in KINDS:
        raise ValueError(f"ablation kind {kind!r} is not one of {KINDS}")
    if kind == "mean" and batch.reference_tokens is not None:
        ref, _ = capture(bridge, batch.reference_tokens, batch.reference_pos, hooks)
        return {h: aligned_means(a, batch.reference_groups, batch.groups, batch.n_pos) for h, a in ref.items()}
    ref, _ = capture(bridge, batch.corrupted_tokens, batch.answer_pos, hooks)
    if kind == "zero":
        return {h: torch.zeros_like(a[:1]) for h, a in ref.items()}
    if kind == "resample":
        perm = torch.randperm(batch.size, generator=torch.Generator().manual_seed(seed)).to(batch.answer_pos.device)
        return {h: a[perm] for h, a in ref.items()}
    groups = batch.groups or [str(int(p)) for p in batch.answer_pos]  # no reference: the batch, aligned by length
    return {h: aligned_means(a, groups, groups, batch.n_pos) for h, a in ref.items()}


def subset_sources(sources: dict[str, torch.Tensor], rows: Sequence[int], n_pos: int) -> dict[str, torch.Tensor]:
    """:func:`ablation_sources` of a batch cut to the prompts ``rows`` (as :meth:`PromptBatch.subset`) and ``n_pos``."""
    out = {}
    for h, a in sources.items():
        a = a if a.shape[0] == 1 else a[torch.as_tensor(list(rows), device=a.device)]  # (1 | rows, pos, ...)
        out[h] = a[:, :n_pos]
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
    hooks = sorted({hook_of(c) for v in variants for c in v})
    sources = ablation_sources(bridge, batch, hooks, kind, seed) if hooks else {}
    _, clean_logits = capture(bridge, batch.clean_tokens, batch.answer_pos, [])

    def metrics(logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([metric(logits), metric.raw(logits), accuracy(logits, batch.answer_ids),
                            kl_divergence(logits, clean_logits)], -1)  # (variant, 4)

    patches = [[patch_of(c) for c in v] for v in variants]
    return run_variants(bridge, batch.clean_tokens, batch.answer_pos, patches, sources, metrics, memory_mb,
                        desc=f"{kind} ablation")


def ablate_heads(bridge: Any, batch: PromptBatch, kind: str = "mean", **kwargs: Any) -> CircuitResult:
    """Ablate each head alone: normalised logit difference ``[layer, head]`` (baseline: clean = 1)."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    out = ablate(bridge, batch, [[Component.head(l, h)] for l in range(n_layers) for h in range(n_heads)], kind, **kwargs)
    return CircuitResult(f"{kind}_ablation_heads", out[:, 0].reshape(n_layers, n_heads), ("layer", "head"), {}, 1.0,
                         {"method": "ablation", "direction": kind, "kind": kind, "accuracy": out[:, 2].tolist(), "kl": out[:, 3].tolist()})


def ablate_mlps(bridge: Any, batch: PromptBatch, kind: str = "mean", **kwargs: Any) -> CircuitResult:
    """Ablate each MLP alone: normalised logit difference ``[layer]``."""
    out = ablate(bridge, batch, [[Component.mlp(l)] for l in range(bridge.cfg.n_layers)], kind, **kwargs)
    return CircuitResult(f"{kind}_ablation_mlps", out[:, 0], ("layer",), {}, 1.0,
                         {"method": "ablation", "direction": kind, "kind": kind, "accuracy": out[:, 2].tolist(), "kl": out[:, 3].tolist()})


def ablate_neurons(bridge: Any, batch: PromptBatch, layer: int, kind: str = "mean",
                   neurons: Sequence[int] | None = None, **kwargs: Any) -> CircuitResult:
    """Ablate each neuron of one MLP (or the listed ``neurons``) alone: normalised logit difference ``[neuron]``."""
    d_mlp = int(getattr(bridge.cfg, "d_mlp", None) or 4 * bridge.cfg.d_model)
    neurons = list(range(d_mlp)) if neurons is None else [int(n) for n in neurons]
    bad = [n for n in neurons if not 0 <= n < d_mlp]
    if bad:
        raise ValueError(f"neuron indices {bad} are out of range for layer {layer} (d_mlp={d_mlp})")
    out = ablate(bridge, batch, [[Component.neuron(layer, n)] for n in neurons], kind, **kwargs)
    return CircuitResult(f"{kind}_ablation_neurons_L{layer}", out[:, 0], ("neuron",),
                         {"neuron": [str(n) for n in neurons]}, 1.0,
                         {"method": "ablation", "direction": kind, "kind": kind, "layer": layer, "neurons": neurons})
