"""The attribution study on one model: every method on the same inputs, one evaluator.

``run_attribute`` loads a canonical model folder and the prepared tasks, attributes every
example with every method (timed), evaluates each method's scores with
:func:`interpipe.faithfulness.evaluate` (not timed), and writes one folder per method::

    <out>/<method>/metrics.json            faithfulness, plausibility, seconds_per_example, ...
    <out>/<method>/attributions.parquet    example_id, input_ids, tokens, target_id, scores
    <out>/<method>/faithfulness_curve.csv  one row per removal ratio
    <out>/<method>/layerwise.csv|.png      normxlogit: the metrics per layer
    <out>/<method>/heatmap.png             a few examples
    <out>/faithfulness.png                 removal curves of every method
    <out>/rank_agreement.csv|.png          Spearman between every pair of methods

and returns the flat summary metrics (``<method>/<metric>``) for the stage's own metrics.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interpipe.attribution.inputs import Batch, encode_rows
from interpipe.attribution.methods import attribute
from interpipe.attribution.model import ScoredModel
from interpipe.attribution.result import Attribution
from interpipe.settings.attribute import AttributeSettings
from interpipe.faithfulness import evaluate, full_probs, rank_agreement, replacement_token

SUMMARY_KEYS = ("comprehensiveness", "sufficiency", "soft_comprehensiveness", "soft_sufficiency",
                "comprehensiveness_accuracy", "sufficiency_accuracy", "plausibility_map", "cue_mass",
                "seconds_per_example")


def load_rows(data_root: str | Path, tasks: list[str], split: str, n_examples: int) -> list[dict]:
    """``n_examples`` rows in all, split evenly over ``tasks`` (first rows of each split)."""
    from interpipe.data import load_task

    per_task = max(1, n_examples // len(tasks))
    rows: list[dict] = []
    for task in tasks:
        data = load_task(data_root, task, split)
        rows += list(data.select(range(min(per_task, len(data)))))
    return rows


def _weighted(parts: list[tuple[dict, int]], key: str) -> float | None:
    pairs = [(m[key], n) for m, n in parts if key in m]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def evaluate_by_task(sm: ScoredModel, batch: Batch, scores, targets, s: AttributeSettings, rule: str,
                     token: int | None, soft: bool = True, cache: dict | None = None) -> tuple[dict, list[dict]]:
    """Evaluate per task; the overall numbers are example-weighted means of the tasks'.

    ``cache`` keeps each task's unperturbed probabilities across methods with the same targets,
    and (under ``"memo"``) the answers for perturbed inputs, which methods and layers often share.
    """
    cache = {} if cache is None else cache
    metrics: dict = {}
    parts: list[tuple[dict, int]] = []
    curves: list[dict] = []
    for task in dict.fromkeys(batch.tasks):
        idx = [i for i, t in enumerate(batch.tasks) if t == task]
        sub = batch.select(idx)
        key = (task, tuple(targets[idx].tolist()))
        if key not in cache:
            cache[key] = full_probs(sm, sub, targets[idx], s.eval_batch_size)
        m, curve = evaluate(sm, sub, scores[idx], targets[idx], s.ratios, rule, token, seed=s.seed,
                            chunk=s.eval_batch_size, soft=soft, full=cache[key], memo=cache.setdefault("memo", {}))
        parts.append((m, len(idx)))
        metrics.update({f"{task}/{k}": v for k, v in m.items()})
        curves += [{"task": task, **row} for row in curve]
    for key in parts[0][0]:
        if key == "n_examples_with_cues":
            metrics[key] = sum(m[key] for m, _ in parts)
            continue
        value = _weighted(parts if key != "plausibility_map" else
                          [(m, m["n_examples_with_cues"]) for m, _ in parts], key)
        if value is not None:
            metrics[key] = value
    return metrics, curves


def attribute_all(sm: ScoredModel, batch: Batch, method: str, s: AttributeSettings, tokenizer,
                  info: dict) -> Attribution:
    """One method over the whole batch, ``s.batch_size`` examples per call."""
    parts = [attribute(sm, batch.select(slice(i, i + s.batch_size)), method, s, tokenizer, info)
             for i in range(0, len(batch), s.batch_size)]
    return Attribution.concat(parts)


def evaluated_layers(n_states: int, max_layers: int) -> list[int]:
    """The layer indices whose scores are evaluated: all, or ``max_layers`` evenly spaced ones
    that always include the embeddings (0) and the last layer.

    >>> evaluated_layers(31, 0)[-1], evaluated_layers(31, 4)
    (30, [0, 10, 20, 30])
    """
    if max_layers <= 0 or max_layers >= n_states:
        return list(range(n_states))
    if max_layers == 1:
        return [n_states - 1]
    step = (n_states - 1) / (max_layers - 1)
    return sorted({round(i * step) for i in range(max_layers)})


def _layerwise(sm, batch, result: Attribution, s, rule, token, cache: dict) -> list[dict]:
    rows = []
    for layer in evaluated_layers(result.layer_scores.shape[0], s.layerwise_max_layers):
        m, _ = evaluate_by_task(sm, batch, result.layer_scores[layer], result.target_ids, s, rule, token, soft=False,
                                cache=cache)
        rows.append({"layer": layer, **{k: v for k, v in m.items() if "/" not in k}})
    return rows


def _heatmap_rows(tasks: list[str], n: int) -> list[int]:
    """``n`` example indices, the first of each task before the second of any."""
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    order = [i for rank in range(len(tasks)) for rows in by_task.values() if rank < len(rows) for i in [rows[rank]]]
    return sorted(order[:n])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve_figure(curves: dict[str, "object"], x: str, title: str):
    """Comprehensiveness and sufficiency against ``x`` (ratio or layer), one line per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, frame in curves.items():
        mean = frame.groupby(x)[["comprehensiveness", "sufficiency"]].mean()
        for ax, key in zip(axes, ("comprehensiveness", "sufficiency")):
            ax.plot(mean.index, mean[key], marker="o", ms=3, label=name)
    for ax, key in zip(axes, ("comprehensiveness (higher = more faithful)", "sufficiency (lower = more faithful)")):
        ax.set_xlabel(x)
        ax.set_title(key, fontsize=9)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def _rank_figure(table):
    plt = _plt()

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(table.values, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(table)), table.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(table)), table.index, fontsize=7)
    fig.colorbar(im, ax=ax, label="mean Spearman")
    ax.set_title("rank agreement between methods", fontsize=9)
    return fig


def run_attribute(settings: AttributeSettings, model_folder: str | Path, data_root: str | Path,
                  out_dir: str | Path, device: str = "cpu", dtype: str = "float32", info: dict | None = None) -> dict:
    """Run the study for one model folder; write ``out_dir/<method>/...``; return summary metrics."""
    import pandas as pd

    from interpipe.io import save_figure, write_frame, write_json
    from interpipe.models import load_model

    s, out_dir = settings, Path(out_dir)
    loaded = load_model(model_folder, device=device, dtype=dtype)
    kind = loaded.card.kind
    sm = ScoredModel(loaded.model, kind)  # fails here for a model without a head
    if s.layerwise and "normxlogit" in s.methods:
        sm.require_final_norm()  # layer-wise scores need it: refuse before any work, naming the model_type
    tasks = s.causal_tasks if kind == "causal_lm" else s.classifier_tasks
    batch = encode_rows(loaded.tokenizer, load_rows(data_root, tasks, s.split, s.n_examples), kind, s.max_length,
                        s.target)
    sm.check_length(batch.input_ids.shape[1])
    sm.check_targets(batch.target_ids)
    rule, token = replacement_token(loaded.tokenizer, s.replacement)
    settings_json = json.dumps(asdict(s), sort_keys=True)
    info = {"model": loaded.card.name, "kind": kind, "tasks": list(tasks), "replacement": rule,
            "settings": asdict(s), "settings_hash": hashlib.sha256(settings_json.encode()).hexdigest()[:12],
            **(info or {})}
    summary: dict = {"n_examples": len(batch)}
    all_scores: dict[str, torch.Tensor] = {}
    all_curves: dict = {}
    cache: dict = {}  # unperturbed probabilities per task, shared by the methods
    for method in tqdm(s.methods, desc=f"attribute {loaded.card.name}"):
        result = attribute_all(sm, batch, method, s, loaded.tokenizer, {**info, "method": method})
        result.check_finite()  # NaN/Inf are reported as an error naming the examples, never written
        metrics, curve = evaluate_by_task(sm, batch, result.scores, result.target_ids, s, rule, token, cache=cache)
        metrics.update(seconds=result.seconds, seconds_per_example=result.seconds / len(batch),
                       examples_per_second=len(batch) / max(result.seconds, 1e-9), n_examples=len(batch))
        folder = out_dir / method
        result.save(folder, overwrite=True)
        write_frame(folder / "faithfulness_curve.csv", pd.DataFrame(curve))
        if result.layer_scores is not None:
            layers = pd.DataFrame(_layerwise(sm, batch, result, s, rule, token, cache))
            write_frame(folder / "layerwise.csv", layers)
            save_figure(_curve_figure({method: layers}, "layer", f"{method} from each layer's states (0 = embeddings)"),
                        folder / "layerwise.png")
        if s.n_heatmaps:
            save_figure(result.plot(_heatmap_rows(batch.tasks, s.n_heatmaps)), folder / "heatmap.png", dpi=100)
        all_scores[method] = result.scores
        all_curves[method] = pd.DataFrame(curve)
        write_json(folder / "metrics.json", metrics)
        summary.update({f"{method}/{k}": metrics[k] for k in SUMMARY_KEYS if k in metrics})
    save_figure(_curve_figure(all_curves, "ratio", f"{loaded.card.name}: removal curves (AOPC = mean over ratios)"),
                out_dir / "faithfulness.png")
    if len(all_scores) > 1:
        table = rank_agreement(all_scores, batch.eligible)
        write_frame(out_dir / "rank_agreement.csv", table.reset_index(names="method"))
        save_figure(_rank_figure(table), out_dir / "rank_agreement.png")
        for method in all_scores:
            others = [m for m in all_scores if m not in (method, "random")]
            if others:
                summary[f"{method}/rank_agreement_mean"] = float(table.loc[method, others].mean())
    return summary
