"""The circuit study as one call: every analysis on every task, circuits, reuse, tables and figures.

:func:`run_circuits` loads the model once into a ``TransformerBridge`` and, per task: direct logit
attribution and the logit lens on all prompts; the solved test (the interval of the clean −
corrupted gap); then, for a solved task, the prompts are split in halves. On the selection half:
exact activation patching of the configured grids (batched), attribution patching with its
correlation to the exact effects, the ranking of heads (:data:`RANKINGS`), the faithfulness curve
and the selected circuit (:mod:`.discovery`), path patching from the top sender heads and the
single-head/MLP/neuron ablations. On the held-out half: the circuit's faithfulness, its random
baseline, accuracy, completeness and minimality (:mod:`.scoring`). Across tasks whose circuits are
smaller than the model and pass their held-out check: head overlap beside chance and cross-task
faithfulness; the headline reports only those circuits (:mod:`.tables`). Nothing depends on the architecture's name: head counts come
from :func:`interpipe.circuits.bridge.architecture`, a family the study cannot run on is refused
when the model loads, and an analysis the bridge cannot do on a family (path patching without
per-head q/k/v inputs) is skipped with a note in ``circuit.json``. It writes
``<out>/<model>-<task>/`` (``metrics.json``, ``effects.parquet``, ``circuit.json``, PNG figures),
``<out>/reuse.csv``, ``overlap.json`` and ``headline.csv``, and returns the flat metrics of the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interpipe.circuits import ablation, attribution_patching, dla, discovery, figures, paths, patching, scoring
from interpipe.circuits.head_classes import HEAD_CLASS_TASKS, capture_hooks, head_classes, mark_circuit
from interpipe.circuits.bridge import batch_from_task, load_bridge
from interpipe.circuits.engine import capture
from interpipe.circuits.tables import TaskCircuit, headline_frame, headline_rows, reuse
from interpipe.circuits.metrics import NormalizedLogitDiff, accuracy, logit_diff, pairwise_accuracy
from interpipe.components import heads_of
from interpipe.io import save_figure, write_frame, write_json
from interpipe.settings.circuits import GRIDS, CircuitSettings
from interpipe.stats import bootstrap, to_metrics

RANK_GRIDS = (("z", ("layer", "head")), ("mlp_out", ("layer",)))  # the effects that rank heads and MLPs
ABLATED = {False: "every attention head outside the circuit, at hook_z (its output before W_O), at every position; "
                  "MLPs and embeddings are never ablated",
           True: "every attention head and MLP outside the circuit, at hook_z and hook_mlp_out, at every position; "
                 "embeddings are never ablated"}


def _frames(results: list) -> Any:
    import pandas as pd

    return pd.concat([r.to_frame() for r in results], ignore_index=True)


def analyse_task(bridge: Any, settings: CircuitSettings, data_root: str | Path, task: str, out: Path,
                 model_name: str, info: dict | None = None) -> tuple[dict[str, Any], TaskCircuit | None]:
    """All analyses of one task, written into ``out``; returns (metrics, circuit or None when unsolved).

    ``info.json`` records what produced the folder: ``info`` (the run record: model origin, seed,
    config hash, revision), the task and the circuit settings.
    """
    start = time.perf_counter()
    settings = settings.for_task(task)
    write_json(out / "info.json", {**(info or {}), "task": task, "model_name": model_name, "settings": asdict(settings)})
    batch = batch_from_task(bridge, data_root, task, settings.prompts_for(task), settings.split, settings.on_mismatch,
                            settings.reference_prompts)
    classed = task in HEAD_CLASS_TASKS
    hooks = dla.dla_hooks(bridge) + (capture_hooks(bridge) if classed else [])
    clean = capture(bridge, batch.clean_tokens, batch.answer_pos, hooks)  # (acts, logits)
    metric, gaps = _metric(bridge, batch, clean[1])
    title = f"{model_name} {task}"
    metrics = _baselines(batch, metric, clean[1], gaps, settings.min_logit_gap)
    tables = _direct(bridge, batch, clean, metrics, out, title)
    classes = None
    if classed:
        classes, paths_in = head_classes(bridge, batch, tables[0], clean[0], gaps, settings, metrics, out, title)
        tables += paths_in
    found = None
    if metrics["solved"]:
        halves = ablation_halves(bridge, batch, settings)
        kw = {"metric": _metric(bridge, halves[0][0])[0], "memory_mb": settings.memory_mb}
        exact, estimates = _patching(bridge, halves[0][0], settings, kw, metrics, tables, out, title)
        found = _discover(bridge, halves, settings, kw, exact, estimates, metrics, tables, out, title)
        if task in settings.edge_tasks:
            _edges(bridge, halves, settings, found, metrics, out, title, info)
    if classes is not None:  # the head-class table marks the circuit's heads and where each head ranked
        write_frame(out / "ioi_heads.csv", mark_circuit(classes, found.components if found else [],
                                                        found.ranking if found else []))
    write_frame(out / "effects.parquet", _frames(tables))
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics, found


def _edges(bridge: Any, halves: list, settings: CircuitSettings, found: TaskCircuit, metrics: dict, out: Path,
           title: str, info: dict | None) -> None:
    """Edge circuits (:mod:`.edges`, ``docs/edges.md``): EAP-IG / EAP curves beside random edge sets and the node
    circuit's induced edges, on the same halves; written to ``out/edges``, summarised as ``edge_*`` metrics."""
    from interpipe.circuits.edges import EdgeRun, edge_study
    from interpipe.models.arch import UnsupportedArchitecture

    run = EdgeRun(settings.edge_methods, settings.edge_budgets, settings.edge_ig_steps, settings.edge_prompts,
                  settings.edge_random_seeds, settings.edge_exact_max_edges, settings.memory_mb, settings.progress)
    node = found.components if found.smaller_than_model else []  # the whole pool is no circuit to compare with
    try:
        result = edge_study(bridge, halves[0][0], halves[1][0], run, node,
                            {**(info or {}), "title": f"{title}: edge circuits (held-out prompts)"})
    except UnsupportedArchitecture as exc:
        metrics["edge_skipped"] = 1
        write_json(out / "edges_skipped.json", {"reason": str(exc)})
        return
    result.save(out / "edges", overwrite=True)
    metrics.update({f"edge_{k}": v for k, v in result.summary.items()})


def ablation_halves(bridge: Any, batch: Any, settings: CircuitSettings) -> list[tuple[Any, dict]]:
    """[(selection half, its ablation values), (held-out half, its ablation values)]: the reference
    distribution is captured once for the whole batch and cut to each half."""
    hooks = sorted({ablation.hook_of(c) for c in scoring.pool(bridge, settings.ablate_mlps)})
    sources = ablation.ablation_sources(bridge, batch, hooks, settings.ablation)
    out = []
    for rows in batch.half_rows():
        half = batch.subset(rows)
        out.append((half, ablation.subset_sources(sources, rows, half.n_pos)))
    return out


def _metric(bridge: Any, batch: Any, clean_logits: torch.Tensor | None = None) -> tuple[NormalizedLogitDiff, Any]:
    """The normalised logit difference of ``batch`` (as :func:`patching.task_metric`) and the per-prompt
    clean and corrupted logit differences ``(2, batch)``, reusing the clean run when given."""
    if clean_logits is None:
        _, clean_logits = capture(bridge, batch.clean_tokens, batch.answer_pos, [])
    _, corrupted = capture(bridge, batch.corrupted_tokens, batch.answer_pos, [])
    lds = torch.stack([logit_diff(clean_logits, batch.answer_ids, batch.foil_ids),
                       logit_diff(corrupted, batch.answer_ids, batch.foil_ids)]).float().cpu().numpy()  # (2, batch)
    return NormalizedLogitDiff(batch.answer_ids, batch.foil_ids, clean=float(lds[0].mean()),
                               corrupted=float(lds[1].mean())), lds


def _baselines(batch: Any, metric: Any, clean_logits: torch.Tensor, lds: Any, min_gap: float) -> dict[str, Any]:
    """Prompt counts, clean/corrupted logit differences with intervals, clean accuracy, foil rate, solved.

    Solved: the 95 % interval of the mean clean − corrupted gap lies above ``min_gap``. Patching effects
    and the per-prompt normalised metric divide by that gap: where its interval reaches below 0.5
    logits (the corruption changes the answer's odds by less than x1.65) they are ratios of noise.
    The rule reads the answer-vs-foil comparison the study measures, not top-1 accuracy: SmolLM2 puts
    the colour of Colored Objects above the foil on every prompt yet continues "The hat" with " is",
    and SVA's verb after a punctuation mark, so ``clean_accuracy`` (top-1) is 0 there while
    ``clean_pairwise_accuracy`` (answer logit above the foil's, with its interval) is the accuracy
    the gap speaks for.
    """
    out = {"n_prompts": batch.size, "skipped_prompts": batch.skipped, "template_groups": len(set(batch.groups)),
           "reference_size": len(batch.reference_groups), "corrupted_logit_diff": metric.corrupted,
           "clean_accuracy": float(accuracy(clean_logits, batch.answer_ids)),
           "clean_foil_rate": float(accuracy(clean_logits, batch.foil_ids))}
    clean_iv, gap_iv = bootstrap(lds[0]), bootstrap(lds[0] - lds[1])
    out.update(to_metrics("clean_logit_diff", clean_iv))
    out.update(to_metrics("logit_gap", gap_iv))
    out.update(to_metrics("clean_pairwise_accuracy", pairwise_accuracy(lds[0])))
    out["solved"] = int(gap_iv.low >= min_gap)
    return out


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
              out: Path, title: str) -> tuple[dict, dict]:
    """Exact patching of ``grids``, attribution patching of ``attribution_grids`` and their correlations.

    Returns the exact denoising results and the denoising attribution estimates by grid / result
    name (with the ranking grids when ``rank_with="attribution"``), so the circuit ranking reuses them.
    """
    grids, attr = _supported_grids(bridge, batch, settings, metrics)
    exact = {g: patching.activation_patch(bridge, batch, *GRIDS[g], **kw) for g in grids}
    extra = list(RANK_GRIDS) if settings.rank_with == "attribution" else []
    wanted = list(dict.fromkeys([GRIDS[g] for g in attr] + extra))
    estimates = attribution_patching.attribution_patch(bridge, batch, wanted, metric=kw["metric"]) if wanted else {}
    by_grid = {g: estimates[patching.grid_name(GRIDS[g][0], patching.result_axes(bridge, *GRIDS[g]))] for g in attr}
    pairs = [(by_grid[g], exact[g]) for g in grids if g in by_grid]
    for g in grids:
        if g in by_grid:
            metrics[f"attribution_corr_{g}"] = attribution_patching.correlation(by_grid[g], exact[g])
    heads_only = [(e, r) for e, r in pairs if {"head", "kv_head"} & set(r.axes)]
    if pairs:  # without an exact grid there is nothing to correlate: no number
        metrics["attribution_corr_heads"] = attribution_patching.correlation(
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
    return exact, estimates


def _discover(bridge: Any, halves: list, settings: CircuitSettings, kw: dict, exact: dict,
              estimates: dict, metrics: dict, tables: list, out: Path, title: str) -> TaskCircuit:
    """Rank and select on the selection half, score on the held-out half; figures, path patching, ``circuit.json``."""
    components = scoring.pool(bridge, settings.ablate_mlps)
    (select, select_sources), (heldout, heldout_sources) = halves
    score = lambda batch, sources: scoring.Scorer(bridge, batch, components, settings.ablation,  # noqa: E731
                                                  settings.memory_mb, sources=sources)
    circuit, extra = _circuit(bridge, select, settings, kw, exact, estimates, score(select, select_sources))
    tables += extra
    scorer = score(heldout, heldout_sources)
    reported, knockouts = scoring.score_heldout(scorer, circuit.components, settings.random_circuits,
                                                settings.completeness_heads)
    metrics.update(reported)
    metrics.update({k: v for k, v in circuit.info.items() if k.startswith(("cpr", "cmd"))})  # MIB summaries of the curve
    metrics.update(selection_faithfulness=circuit.faithfulness, target_reached=circuit.info["target_reached"],
                   heldout_above_target=int(reported["faithfulness_ci_low"] >= settings.target_faithfulness))
    save_figure(figures.faithfulness_plot(circuit.curve, circuit.ranking, circuit.info["k"], reported,
                                          settings.target_faithfulness, title), out / "headline_faithfulness.png")
    top = heads_of(c for c, _ in circuit.ranking)[: settings.figure_heads]
    save_figure(figures.attention_patterns(bridge, select, top, title), out / "attention_top_heads.png")
    notes = []
    senders = top[: settings.path_senders]
    reason = paths.path_patching_support(bridge) if senders else None
    if reason:
        notes.append(f"path patching skipped: {reason}")
        metrics["path_patching_skipped"] = 1
        senders = []
    for c in senders:
        tables.append(paths.path_patch(bridge, select, c, sender_positions=settings.sender_positions, **kw))
    knockouts = [{**row, "head": row["head"].name} for row in knockouts]  # heads by name in the JSON
    write_json(out / "circuit.json", {**circuit.to_json(), "knockouts": knockouts, "ablated": ABLATED[settings.ablate_mlps],
                                      **({"notes": notes} if notes else {})})
    return TaskCircuit(circuit.components, scorer, bool(circuit.info["target_reached"]), bool(metrics["heldout_above_target"]),
                       circuit.ranking)


def _stack(results: list) -> Any:
    from interpipe.circuits.results import CircuitResult

    return CircuitResult("stack", torch.cat([r.values.flatten() for r in results]), ("cell",),
                         baseline=results[0].baseline)


RANKINGS = {"denoise": ("denoise",), "noise": ("noise",), "both": ("denoise", "noise"), "ablation": ("ablation",),
            "all": ("denoise", "noise", "ablation")}  # rank_by -> the effects whose largest |value| ranks a component


def _scores(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict, exact: dict, estimates: dict,
            scorer: scoring.Scorer) -> tuple[dict[str, tuple], list]:
    """Per effect (denoising, noising, single-component ablation), the (head ``[layer, head]``, MLP
    ``[layer]`` or None) results that rank the components, and the results computed here only."""
    scores, new = {}, []
    mlp = settings.ablate_mlps
    for effect in RANKINGS[settings.rank_by]:
        if effect == "ablation" and settings.rank_with == "exact":
            heads = ablation.ablate_heads(bridge, batch, settings.ablation, **kw)
            mlps = ablation.ablate_mlps(bridge, batch, settings.ablation, **kw) if mlp else None
        elif effect == "ablation":
            est = attribution_patching.attribution_patch(bridge, batch, list(RANK_GRIDS) if mlp else [RANK_GRIDS[0]],
                                                         metric=kw["metric"], ablation=settings.ablation,
                                                         ablation_values=scorer.sources)
            heads, mlps = est["z_head"], est.get("mlp_out_layer")
        elif settings.rank_with == "exact":
            reuse = effect == "denoise" and "z" in exact  # the exact denoising grid is in the tables already
            heads = exact["z"] if reuse else patching.activation_patch(bridge, batch, "z", ("layer", "head"),
                                                                      direction=effect, **kw)
            mlps = patching.activation_patch(bridge, batch, "mlp_out", ("layer",), direction=effect, **kw) if mlp else None
            new += [r for r in (None if reuse else heads, mlps) if r is not None]
            scores[effect] = (heads, mlps)
            continue
        else:
            est = estimates if effect == "denoise" else attribution_patching.attribution_patch(
                bridge, batch, list(RANK_GRIDS), effect, kw["metric"])
            heads, mlps = est["z_head"], est["mlp_out_layer"] if mlp else None
        # the denoising attribution estimates are in the tables already
        new += [r for r in ((None if effect == "denoise" else heads), mlps) if r is not None]
        scores[effect] = (heads, mlps)
    return scores, new


def _circuit(bridge: Any, batch: Any, settings: CircuitSettings, kw: dict, exact: dict, estimates: dict,
             scorer: scoring.Scorer) -> tuple[Any, list]:
    """Rank heads (and MLPs when ablated) by patching effect, then select by faithfulness on ``scorer``."""
    scores, extra = _scores(bridge, batch, settings, kw, exact, estimates, scorer)
    head_score = torch.stack([h.effect().abs() for h, _ in scores.values()]).amax(0)
    mlp_score = torch.stack([m.effect().abs() for _, m in scores.values()]).amax(0) if settings.ablate_mlps else None
    ranking = discovery.rank_components(head_score, mlp_score)
    circuit = discovery.select_circuit(scorer, ranking, settings.selection, settings.threshold, settings.top_k,
                                       settings.target_faithfulness, settings.curve_points, settings.refine_steps)
    if settings.single_ablations and not (settings.rank_with == "exact" and "ablation" in scores):
        extra += [ablation.ablate_heads(bridge, batch, settings.ablation, **kw),
                  ablation.ablate_mlps(bridge, batch, settings.ablation, **kw)]
    if settings.neuron_ablation > 0:
        estimate = attribution_patching.attribution_patch(bridge, batch, [("mlp_post", ("layer", "neuron"))], "noise", kw["metric"])
        grid = estimate["mlp_post_neuron"].effect()  # (layer, neuron)
        top_mlp = next((c for c, _ in ranking if c.kind == "mlp"), None)  # ranked only when MLPs are ablated
        layer = top_mlp.layer if top_mlp else int(grid.abs().sum(1).argmax())
        neurons = grid[layer].abs().argsort(descending=True)[: settings.neuron_ablation].tolist()
        extra.append(ablation.ablate_neurons(bridge, batch, layer, settings.ablation, neurons, **kw))
    return circuit, extra


def run_circuits(settings: CircuitSettings, model_source: str | Path, data_root: str | Path, out_dir: str | Path,
                 model_name: str = "model", device: str = "cpu", dtype: str = "float32",
                 info: dict | None = None) -> dict[str, Any]:
    """Run the circuit study on every task of ``settings``; returns the flat metrics of the run.

    ``info`` (the run record) is written into every task folder's ``info.json``.
    """
    from interpipe.runtime import resolve_device

    start = time.perf_counter()
    out_dir = Path(out_dir)
    bridge = load_bridge(model_source, device=str(resolve_device(device)), dtype=dtype)
    metrics: dict[str, Any] = {}
    found: dict[str, TaskCircuit] = {}
    headline = []
    for task in tqdm(settings.tasks, desc="circuits", disable=not settings.progress):
        folder = out_dir / f"{model_name}-{task}"
        folder.mkdir(parents=True, exist_ok=True)
        task_metrics, circuit = analyse_task(bridge, settings, data_root, task, folder, model_name, info)
        if circuit is not None:
            found[task] = circuit
        for key in [*SUMMARY, *(k for k in task_metrics if k.startswith(EDGE_SUMMARY))]:
            if key in task_metrics:
                metrics[f"{task}/{key}"] = task_metrics[key]
        headline += headline_rows(model_name, task, task_metrics, f"{settings.ablation} ablation of "
                                  f"{ABLATED[settings.ablate_mlps]}", settings.target_faithfulness)
    metrics.update(reuse(found, settings.overlap or settings.tasks, out_dir))
    write_frame(out_dir / "headline.csv", headline_frame(headline))
    metrics["seconds"] = time.perf_counter() - start
    return metrics


SUMMARY = tuple(f"{k}{s}" for k in ("faithfulness", "faithfulness_per_prompt", "random_faithfulness", "excess_over_random",
                                     "circuit_accuracy", "clean_logit_diff", "logit_gap", "cpr", "cmd") for s in ("", "_ci_low", "_ci_high")) + (
    "circuit_size", "circuit_heads", "pool_size", "heldout_above_target", "target_reached", "completeness_gap_max",
    "minimality_min", "attribution_corr_heads", "clean_accuracy", "clean_pairwise_accuracy", "heldout_accuracy", "solved",
    "seconds")
EDGE_SUMMARY = tuple(f"edge_{m}" for m in ("eap", "random", "node_circuit", "edges_total", "seconds", "skipped"))  # prefixes
