"""The circuit study as one call: every analysis on every task, circuits, overlap, tables and figures.

:func:`run_circuits` loads the model once into a ``TransformerBridge`` and, per task, runs direct
logit attribution and the logit lens, exact activation patching of the configured grids (batched),
attribution patching of the same (or other) grids with its correlation to the exact effects, path
patching from the top sender heads, single-head/MLP/neuron ablations, and circuit discovery with its
faithfulness. Nothing depends on the architecture's name: head counts and positions come from
:func:`interpipe.circuits.bridge.architecture`, a family the study cannot run on is refused when
the model loads, and an analysis the bridge cannot do on a family (path patching without per-head
q/k/v inputs) is skipped with a note in ``circuit.json``. Large models fit a CPU budget by ranking
with attribution patching (``rank_with``), sampling the faithfulness curve (``curve_points``) and
skipping the one-component-at-a-time sweeps (``single_ablations``, ``neuron_ablation``). It writes ``<out>/<model>-<task>/`` (``metrics.json``, ``effects.parquet`` with the
columns ``analysis, layer, head, position, effect, value``, ``circuit.json`` and PNG figures) and
returns the flat metrics of the whole run, including the head overlap of the circuits of the
configured task pair.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interpipe.circuits import ablation, attribution, dla, discovery, figures, paths, patching
from interpipe.circuits.bridge import batch_from_task, load_bridge
from interpipe.circuits.engine import capture
from interpipe.circuits.metrics import NormalizedLogitDiff, accuracy, logit_diff
from interpipe.io import save_figure, write_frame, write_json
from interpipe.settings.circuits import GRIDS, CircuitSettings

RANK_GRIDS = (("z", ("layer", "head")), ("mlp_out", ("layer",)))  # the effects that rank heads and MLPs


def _frames(results: list) -> Any:
    import pandas as pd

    return pd.concat([r.to_frame() for r in results], ignore_index=True)


def analyse_task(bridge: Any, settings: CircuitSettings, data_root: str | Path, task: str, out: Path,
                 model_name: str) -> tuple[dict[str, Any], list[str]]:
    """All analyses of one task, written into ``out``; returns (metrics, circuit heads)."""
    start = time.perf_counter()
    batch = batch_from_task(bridge, data_root, task, settings.n_prompts, settings.split, settings.on_mismatch)
    clean = capture(bridge, batch.clean_tokens, batch.answer_pos, dla.dla_hooks(bridge))  # (acts, logits)
    metric = _metric(bridge, batch, clean[1])
    kw = {"metric": metric, "memory_mb": settings.memory_mb}
    title = f"{model_name} {task}"
    metrics = _baselines(batch, metric, clean[1])
    tables = _direct(bridge, batch, clean, metrics, out, title)
    metrics["solved"] = int(metric.clean - metric.corrupted >= settings.min_logit_gap)
    heads: list[str] = []
    if metrics["solved"]:
        estimates = _patching(bridge, batch, settings, kw, metrics, tables, out, title)
        heads = _discover(bridge, batch, settings, kw, estimates, metrics, tables, out, title)
    write_frame(out / "effects.parquet", _frames(tables))
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics, heads


def _metric(bridge: Any, batch: Any, clean_logits: torch.Tensor) -> NormalizedLogitDiff:
    """The normalised logit difference of ``batch`` (as :func:`patching.task_metric`), reusing the clean run."""
    _, corrupted = capture(bridge, batch.corrupted_tokens, batch.answer_pos, [])
    return NormalizedLogitDiff(batch.answer_ids, batch.foil_ids,
                               clean=float(logit_diff(clean_logits, batch.answer_ids, batch.foil_ids).mean()),
                               corrupted=float(logit_diff(corrupted, batch.answer_ids, batch.foil_ids).mean()))


def _baselines(batch: Any, metric: Any, clean_logits: torch.Tensor) -> dict[str, Any]:
    """Prompt counts, clean/corrupted logit differences, clean accuracy and foil rate."""
    return {"n_prompts": batch.size, "skipped_prompts": batch.skipped, "clean_logit_diff": metric.clean,
            "corrupted_logit_diff": metric.corrupted, "clean_accuracy": float(accuracy(clean_logits, batch.answer_ids)),
            "clean_foil_rate": float(accuracy(clean_logits, batch.foil_ids))}


def _direct(bridge: Any, batch: Any, clean: tuple, metrics: dict, out: Path, title: str) -> list:
    """Direct logit attribution and the logit lens of the clean run (figure ``dla.png``); returns their tables."""
    direct = dla.direct_logit_attribution(bridge, batch, captured=clean)
    lens = dla.logit_lens(bridge, batch, captured=clean)
    metrics.update(dla_residual_error=direct.info["max_abs_residual_error"], dla_logit_diff=direct.info["logit_diff"])
    save_figure(figures.heatmaps([dla.dla_head_grid(direct, bridge.cfg.n_layers, bridge.cfg.n_heads), lens],
                                 f"{title}: direct logit attribution, logit lens"), out / "dla.png")
    return [direct, lens]


def _supported_grids(bridge: Any, batch: Any, settings: CircuitSettings, metrics: dict) -> tuple[list, list]:
    """The exact and attribution grids this model supports; pattern grids dropped where edits are discarded."""
    attr = settings.attribution_grids if settings.attribution_grids is not None else settings.grids
    wanted = [*settings.grids, *attr]
    if not any(GRIDS[g][0] == "pattern" for g in wanted):
        return list(settings.grids), list(attr)
    if patching.pattern_patching_support(bridge, batch.clean_tokens) is None:
        return list(settings.grids), list(attr)
    metrics["pattern_patching_skipped"] = 1
    keep = lambda grids: [g for g in grids if GRIDS[g][0] != "pattern"]  # noqa: E731
    return keep(settings.grids), keep(attr)


def _patching(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict, metrics: dict, tables: list,
              out: Path, title: str) -> dict:
    """Exact patching of ``grids``, attribution patching of ``attribution_grids`` and their correlations.

    Returns the denoising attribution estimates by result name (with the ranking grids when
    ``rank_with="attribution"``, so the circuit ranking reuses them).
    """
    grids, attr = _supported_grids(bridge, batch, settings, metrics)
    exact = {g: patching.activation_patch(bridge, batch, *GRIDS[g], **kw) for g in grids}
    extra = list(RANK_GRIDS) if settings.rank_with == "attribution" else []
    wanted = list(dict.fromkeys([GRIDS[g] for g in attr] + extra))
    estimates = attribution.attribution_patch(bridge, batch, wanted, metric=kw["metric"]) if wanted else {}
    by_grid = {g: estimates[patching.grid_name(GRIDS[g][0], patching.result_axes(bridge, *GRIDS[g]))] for g in attr}
    pairs = [(by_grid[g], exact[g]) for g in grids if g in by_grid]
    for g in grids:
        if g in by_grid:
            metrics[f"attribution_corr_{g}"] = attribution.correlation(by_grid[g], exact[g])
    heads_only = [(e, r) for e, r in pairs if {"head", "kv_head"} & set(r.axes)]
    if pairs:  # without an exact grid there is nothing to correlate: no number
        metrics["attribution_corr_heads"] = attribution.correlation(
            _stack([e for e, _ in heads_only]), _stack([r for _, r in heads_only])) if heads_only else 0.0
    tables += list(exact.values()) + [e for e, _ in pairs] + [by_grid[g] for g in attr if g not in exact]
    if exact:
        save_figure(figures.heatmaps(list(exact.values()), f"{title}: activation patching (clean → corrupted)"),
                    out / "patching.png")
    if pairs:
        save_figure(figures.attribution_scatter(pairs, f"{title}: attribution vs exact"), out / "attribution.png")
    only = [by_grid[g] for g in attr if g not in exact]
    if only:
        save_figure(figures.heatmaps(only, f"{title}: attribution patching estimates (clean → corrupted)"),
                    out / "attribution_patching.png")
    return estimates


def _discover(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict, estimates: dict, metrics: dict,
              tables: list, out: Path, title: str) -> list[str]:
    """Circuit selection, its faithfulness, top-head figures and path patching; returns the circuit's heads."""
    circuit, extra = _circuit(bridge, batch, settings, kw, estimates)
    tables += extra
    metrics.update(faithfulness=circuit.faithfulness, circuit_size=len(circuit.components),
                   circuit_heads=len(circuit.heads))
    save_figure(figures.faithfulness_plot(circuit.curve, circuit.ranking, circuit.info["k"], title,
                                          circuit.info["curve_k"]), out / "faithfulness.png")
    top = [ablation.Component.parse(n) for n, _ in circuit.ranking if "H" in n][: settings.figure_heads]
    save_figure(figures.attention_patterns(bridge, batch, [(c.layer, c.index) for c in top], title),
                out / "attention_top_heads.png")
    notes = []
    senders = top[: settings.path_senders]
    reason = paths.path_patching_support(bridge) if senders else None
    if reason:
        notes.append(f"path patching skipped: {reason}")
        metrics["path_patching_skipped"] = 1
        senders = []
    for c in senders:
        tables.append(paths.path_patch(bridge, batch, (c.layer, c.index), sender_positions=settings.sender_positions, **kw))
    write_json(out / "circuit.json", {"components": circuit.components, "heads": circuit.heads,
                                      "ranking": circuit.ranking, "faithfulness_curve": circuit.curve,
                                      "selection": circuit.selection, **circuit.info,
                                      **({"notes": notes} if notes else {})})
    return circuit.heads


def _stack(results: list) -> Any:
    from interpipe.circuits.results import CircuitResult

    return CircuitResult("stack", torch.cat([r.values.flatten() for r in results]), ("cell",),
                         baseline=results[0].baseline)


def _scores(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict, estimates: dict) -> dict[str, tuple]:
    """Per direction, the (head ``[layer, head]``, MLP ``[layer]``) effects that rank the components."""
    scores = {}
    for direction in ("denoise", "noise"):
        if settings.rank_by not in (direction, "both"):
            continue
        if settings.rank_with == "exact":
            scores[direction] = (patching.activation_patch(bridge, batch, "z", ("layer", "head"), direction=direction, **kw),
                                 patching.activation_patch(bridge, batch, "mlp_out", ("layer",), direction=direction, **kw))
            continue
        est = estimates if direction == "denoise" else attribution.attribution_patch(
            bridge, batch, list(RANK_GRIDS), direction, kw["metric"])
        scores[direction] = (est["z_head"], est["mlp_out_layer"])
    return scores


def _circuit(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict, estimates: dict) -> tuple[Any, list]:
    """Rank heads and MLPs by patching effect, ablate, pick the circuit."""
    scores = _scores(bridge, batch, settings, kw, estimates)
    head_score = torch.stack([h.effect().abs() for h, _ in scores.values()]).amax(0)
    mlp_score = torch.stack([m.effect().abs() for _, m in scores.values()]).amax(0)
    ranking = discovery.rank_components(head_score, mlp_score)
    size = discovery.selected_size(ranking, settings.selection, settings.threshold, settings.top_k)
    ks = discovery.curve_ks(len(ranking), settings.curve_points, [] if size is None else [size])
    curve = discovery.faithfulness_curve(bridge, batch, ranking, settings.ablation, ks=ks, **kw)
    circuit = discovery.select_circuit(ranking, curve, settings.selection, settings.threshold, settings.top_k,
                                       settings.target_faithfulness, ks)
    extra = [r for pair in scores.values() for r in pair] if settings.rank_with == "exact" else []
    if settings.single_ablations:
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
