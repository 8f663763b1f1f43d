"""The circuit study as one call: every analysis on every task, circuits, overlap, tables and figures.

:func:`run_circuits` loads the model once into a ``TransformerBridge`` and, per task, runs direct
logit attribution and the logit lens, exact activation patching of the configured grids (batched),
attribution patching of the same grids with its correlation to the exact effects, path patching
from the top sender heads, single-head/MLP/neuron ablations, and circuit discovery with its
faithfulness. It writes ``<out>/<model>-<task>/`` (``metrics.json``, ``effects.parquet`` with the
columns ``analysis, layer, head, position, effect, value``, ``circuit.json`` and PNG figures) and
returns the flat metrics of the whole run, including the head overlap of the circuits of the
configured task pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interpipe.circuits import ablation, attribution, dla, discovery, figures, paths, patching
from interpipe.circuits.bridge import batch_from_task, load_bridge
from interpipe.circuits.engine import capture
from interpipe.circuits.metrics import accuracy
from interpipe.io import save_figure, write_frame, write_json

# grid name -> (activation, axes) of the exact and attribution patching runs
GRIDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": ("resid_pre", ("layer", "pos")), "attn_out": ("attn_out", ("layer", "pos")),
    "mlp_out": ("mlp_out", ("layer", "pos")), "z": ("z", ("layer", "head")), "z_pos": ("z", ("layer", "pos", "head")),
    "q": ("q", ("layer", "head")), "k": ("k", ("layer", "head")), "v": ("v", ("layer", "head")),
    "pattern": ("pattern", ("layer", "head")), "pattern_pos": ("pattern", ("layer", "head", "pos")),
}
RANK_BY = ("denoise", "noise", "both")


@dataclass
class CircuitSettings:
    """Settings of the circuit study (``conf/circuits/``)."""

    tasks: list[str] = field(default_factory=lambda: ["ioi", "colored_objects", "sva", "induction"])  # default pipeline's tasks
    n_prompts: int = 32  # prompts per task: small keeps the default pipeline inside its time budget
    split: str = "test"  # held-out prompts the model never trained on
    on_mismatch: str = "error"  # error | skip prompts whose clean/corrupted token lengths differ
    grids: list[str] = field(default_factory=lambda: ["resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"])
    rank_by: str = "both"  # rank components by |denoising|, |noising| or the larger of the two effects
    selection: str = "faithfulness"  # faithfulness | threshold | top_k
    target_faithfulness: float = 0.8  # smallest top-k circuit reaching this is selected
    threshold: float = 0.1  # |effect| cut for selection=threshold
    top_k: int = 8  # circuit size for selection=top_k
    ablation: str = "mean"  # mean | zero | resample: how components outside the circuit are removed
    path_senders: int = 1  # path patching from this many top-ranked heads
    sender_positions: str = "all"  # all | answer: positions of the sender's write (Merullo et al. use the last)
    neuron_ablation: int = 32  # ablate this many neurons of the top-ranked MLP (picked by attribution), one at a time
    figure_heads: int = 4  # attention-pattern panels for the top heads
    overlap: list[str] = field(default_factory=lambda: ["ioi", "colored_objects"])  # task pair compared
    min_logit_gap: float = 0.5  # below this clean-corrupted gap the task is unsolved: no circuit is sought
    memory_mb: float = 512.0  # activation memory per batched forward; sets the chunk size
    progress: bool = False  # per-chunk progress bars

    def __post_init__(self) -> None:
        bad = [g for g in self.grids if g not in GRIDS]
        if bad:
            raise ValueError(f"circuits.grids has unknown entries {bad}: use {sorted(GRIDS)}")
        checks = {"rank_by": (self.rank_by, RANK_BY), "selection": (self.selection, discovery.SELECTIONS),
                  "ablation": (self.ablation, ablation.KINDS), "on_mismatch": (self.on_mismatch, ("error", "skip")),
                  "sender_positions": (self.sender_positions, paths.SENDER_POSITIONS)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"circuits.{key}={value!r} is not one of {allowed}")
        if self.n_prompts < 1:
            raise ValueError(f"circuits.n_prompts={self.n_prompts} must be >= 1")
        if not 0 < self.target_faithfulness <= 2:
            raise ValueError(f"circuits.target_faithfulness={self.target_faithfulness} must be in (0, 2]")
        if len(self.overlap) not in (0, 2):
            raise ValueError(f"circuits.overlap={self.overlap} must name two tasks (or none)")
        if self.memory_mb <= 0:
            raise ValueError(f"circuits.memory_mb={self.memory_mb} must be > 0")


def _frames(results: list) -> Any:
    import pandas as pd

    return pd.concat([r.to_frame() for r in results], ignore_index=True)


def analyse_task(bridge: Any, settings: CircuitSettings, data_root: str | Path, task: str, out: Path,
                 model_name: str) -> tuple[dict[str, Any], list[str]]:
    """All analyses of one task, written into ``out``; returns (metrics, circuit heads)."""
    start = time.perf_counter()
    batch = batch_from_task(bridge, data_root, task, settings.n_prompts, settings.split, settings.on_mismatch)
    metric = patching.task_metric(bridge, batch)
    kw = {"metric": metric, "memory_mb": settings.memory_mb}
    _, clean_logits = capture(bridge, batch.clean_tokens, batch.answer_pos, [])
    metrics: dict[str, Any] = {
        "n_prompts": batch.size, "skipped_prompts": batch.skipped, "clean_logit_diff": metric.clean,
        "corrupted_logit_diff": metric.corrupted, "clean_accuracy": float(accuracy(clean_logits, batch.answer_ids)),
        "clean_foil_rate": float(accuracy(clean_logits, batch.foil_ids)),
    }
    title = f"{model_name} {task}"
    direct = dla.direct_logit_attribution(bridge, batch)
    lens = dla.logit_lens(bridge, batch)
    metrics.update(dla_residual_error=direct.info["max_abs_residual_error"], dla_logit_diff=direct.info["logit_diff"])
    save_figure(figures.heatmaps([dla.dla_head_grid(direct, bridge.cfg.n_layers, bridge.cfg.n_heads), lens],
                                 f"{title}: direct logit attribution, logit lens"), out / "dla.png")
    tables = [direct, lens]
    solved = metric.clean - metric.corrupted >= settings.min_logit_gap
    metrics["solved"] = int(solved)
    heads: list[str] = []
    if solved:
        exact = {g: patching.activation_patch(bridge, batch, *GRIDS[g], **kw) for g in settings.grids}
        estimates = attribution.attribution_patch(bridge, batch, [GRIDS[g] for g in settings.grids], metric=metric)
        pairs = [(estimates[r.name], r) for r in exact.values()]
        for g, (estimate, result) in zip(settings.grids, pairs):
            metrics[f"attribution_corr_{g}"] = attribution.correlation(estimate, result)
        heads_only = [(e, r) for e, r in pairs if "head" in r.axes]
        metrics["attribution_corr_heads"] = attribution.correlation(
            _stack([e for e, _ in heads_only]), _stack([r for _, r in heads_only])) if heads_only else 0.0
        tables += list(exact.values()) + [e for e, _ in pairs]
        save_figure(figures.heatmaps(list(exact.values()), f"{title}: activation patching (clean → corrupted)"),
                    out / "patching.png")
        save_figure(figures.attribution_scatter(pairs, f"{title}: attribution vs exact"), out / "attribution.png")
        circuit, extra = _circuit(bridge, batch, settings, kw)
        tables += extra
        heads = circuit.heads
        metrics.update(faithfulness=circuit.faithfulness, circuit_size=len(circuit.components), circuit_heads=len(heads))
        write_json(out / "circuit.json", {"components": circuit.components, "heads": heads, "ranking": circuit.ranking,
                                          "faithfulness_curve": circuit.curve, "selection": circuit.selection,
                                          **circuit.info})
        save_figure(figures.faithfulness_plot(circuit.curve, circuit.ranking, circuit.info["k"], title),
                    out / "faithfulness.png")
        top = [ablation.Component.parse(n) for n, _ in circuit.ranking if "H" in n][: settings.figure_heads]
        save_figure(figures.attention_patterns(bridge, batch, [(c.layer, c.index) for c in top], title),
                    out / "attention_top_heads.png")
        for c in top[: settings.path_senders]:
            result = paths.path_patch(bridge, batch, (c.layer, c.index), sender_positions=settings.sender_positions, **kw)
            tables.append(result)
    write_frame(out / "effects.parquet", _frames(tables))
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics, heads


def _stack(results: list) -> Any:
    from interpipe.circuits.results import CircuitResult

    return CircuitResult("stack", torch.cat([r.values.flatten() for r in results]), ("cell",),
                         baseline=results[0].baseline)


def _circuit(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict) -> tuple[Any, list]:
    """Rank heads and MLPs by patching effect, ablate, pick the circuit."""
    scores = {}
    for direction in ("denoise", "noise"):
        if settings.rank_by in (direction, "both"):
            heads = patching.activation_patch(bridge, batch, "z", ("layer", "head"), direction=direction, **kw)
            mlps = patching.activation_patch(bridge, batch, "mlp_out", ("layer",), direction=direction, **kw)
            scores[direction] = (heads, mlps)
    head_score = torch.stack([h.effect().abs() for h, _ in scores.values()]).amax(0)
    mlp_score = torch.stack([m.effect().abs() for _, m in scores.values()]).amax(0)
    ranking = discovery.rank_components(head_score, mlp_score)
    curve = discovery.faithfulness_curve(bridge, batch, ranking, settings.ablation, **kw)
    circuit = discovery.select_circuit(ranking, curve, settings.selection, settings.threshold, settings.top_k,
                                       settings.target_faithfulness)
    extra = [r for pair in scores.values() for r in pair]
    extra += [ablation.ablate_heads(bridge, batch, settings.ablation, **kw),
              ablation.ablate_mlps(bridge, batch, settings.ablation, **kw)]
    top_mlp = next((ablation.Component.parse(n) for n, _ in ranking if n.endswith(".mlp")), None)
    if settings.neuron_ablation > 0 and top_mlp is not None:
        estimate = attribution.attribution_patch(bridge, batch, [("mlp_post", ("layer", "neuron"))], "noise", kw["metric"])
        row = estimate["mlp_post_neuron"].effect()[top_mlp.layer]  # (neuron,)
        neurons = row.abs().argsort(descending=True)[: settings.neuron_ablation].tolist()
        extra.append(ablation.ablate_neurons(bridge, batch, top_mlp.layer, settings.ablation, neurons, **kw))
    return circuit, extra


def run_circuits(settings: CircuitSettings, model_source: str | Path, data_root: str | Path, out_dir: str | Path,
                 model_name: str = "model", device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Run the circuit study on every task of ``settings``; returns the flat metrics of the run."""
    from interpipe.runtime import resolve_device

    start = time.perf_counter()
    out_dir = Path(out_dir)
    bridge = load_bridge(model_source, device=str(resolve_device(device)), dtype=dtype)
    metrics: dict[str, Any] = {}
    circuits: dict[str, list[str]] = {}
    for task in tqdm(settings.tasks, desc="circuits", disable=not settings.progress):
        folder = out_dir / f"{model_name}-{task}"
        folder.mkdir(parents=True, exist_ok=True)
        task_metrics, heads = analyse_task(bridge, settings, data_root, task, folder, model_name)
        circuits[task] = heads
        for key in ("faithfulness", "circuit_size", "circuit_heads", "attribution_corr_heads", "clean_logit_diff",
                    "clean_accuracy", "solved", "seconds"):
            if key in task_metrics:
                metrics[f"{task}/{key}"] = task_metrics[key]
    solved = {t for t in circuits if metrics.get(f"{t}/solved")}
    if len(settings.overlap) == 2 and not all(t in solved for t in settings.overlap):
        write_json(out_dir / "overlap.json", {"tasks": list(settings.overlap), "overlap": None,
                                              "note": "not computed: a task of the pair is unsolved or was not run",
                                              "solved": sorted(solved)})
    elif len(settings.overlap) == 2:
        a, b = settings.overlap
        value = discovery.circuit_overlap(circuits[a], circuits[b])
        metrics[f"overlap_{a}_{b}"] = value
        write_json(out_dir / "overlap.json", {"tasks": [a, b], "heads": {a: circuits[a], b: circuits[b]},
                                              "common": sorted(set(circuits[a]) & set(circuits[b])),
                                              "overlap": value, "definition": "heads in common / heads in either"})
    metrics["seconds"] = time.perf_counter() - start
    return metrics
