"""The attribution study on one model: every method on the same inputs, one faithfulness scorer.

``run_attribute`` loads a canonical model folder and the prepared tasks, attributes every
example with every method (timed), scores each method's attributions with
:func:`interpipe.attribution.faithfulness.faithfulness_per_example` (not timed), and writes one folder per method::

    <out>/<method>/metrics.json            every metric with its 95 % interval, paired differences
                                           vs random and vs IG (``vs_random/``, ``vs_ig/``), cost
    <out>/<method>/attributions.parquet    example_id, input_ids, tokens, target_id, scores
    <out>/<method>/per_example.csv         every metric of every example (what the intervals rest on)
    <out>/<method>/faithfulness_curve.csv  one row per removal ratio
    <out>/<method>/layerwise.csv|.png      normxlogit: the metrics per layer
    <out>/<method>/heatmap.png             a few examples
    <out>/integrated_gradients/completeness.csv  per example: y(x), y(b), Σ scores, gap, steps
    <out>/faithfulness.png                 removal curves of every method
    <out>/rank_agreement.csv|.png          Spearman between every pair of methods
    <out>/winrate.csv                      method × metric: difference vs random, interval, win
    <out>/operators.csv                    hard metrics under every removal operator (mask|pad|delete|mean)
    <out>/references/                      the floor and the ceiling (:mod:`interpipe.attribution.bounds`)
    <out>/headline.csv, headline_*.png     the quoted numbers with intervals and baselines: first each
                                           method's top-k comprehensiveness between the random floor (0)
                                           and the leave-one-out oracle (1), per task, and whether the
                                           study is informative there; then the ratio AOPCs vs random

and returns the flat summary metrics (``<method>/<metric>``) for the stage's own metrics.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from interpipe.attribution.bounds import Bounds, compute_bounds, full_cached, write_bounds
from interpipe.attribution.figures import curve_figure, headline_figure, normalised_figure, rank_figure
from interpipe.attribution.inputs import Batch, encode_rows
from interpipe.attribution.methods import attribute
from interpipe.attribution.model import ScoredModel
from interpipe.attribution.result import Attribution
from interpipe.settings.attribute import AttributeSettings
from interpipe.attribution.uncertainty import (HARD_METRICS, NORMALISED, TOP_K, bounded_rows, comparisons,
                                               headline_rows, normalised_metrics, paired, relative_gap_summary,
                                               summarise, win_table)
from interpipe.attribution.faithfulness import faithfulness_per_example, rank_agreement, replacement_token
from interpipe.stats import CI_HIGH, CI_LOW

SUMMARY_KEYS = (TOP_K, NORMALISED, "comprehensiveness", "sufficiency", "soft_comprehensiveness", "soft_sufficiency",
                "comprehensiveness_accuracy", "sufficiency_accuracy", "plausibility_map", "cue_mass",
                "seconds_per_example", "win_rate_vs_random", "relative_gap_median", "relative_gap_max",
                "steps_mean", "steps_max", "converged_fraction")
HEADLINE_METHODS = ("normxlogit", "integrated_gradients", "grad_x_input", "saliency", "random")


def load_rows(data_root: str | Path, tasks: list[str], split: str, n_examples: int) -> list[dict]:
    """``n_examples`` rows in all, split evenly over ``tasks`` (first rows of each split)."""
    from interpipe.data import load_task

    per_task = max(1, n_examples // len(tasks))
    rows: list[dict] = []
    for task in tasks:
        data = load_task(data_root, task, split)
        rows += list(data.select(range(min(per_task, len(data)))))
    return rows


def faithfulness_by_task(sm: ScoredModel, batch: Batch, scores, targets, s: AttributeSettings, rule: str,
                         token: int | None, soft: bool = True, cache: dict | None = None,
                         rows: list[int] | None = None, top_k: int = 0) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per-example faithfulness metrics over the whole batch (NaN outside ``rows``), task by task.

    ``scores, targets`` hold the ``rows`` (default: every example) in order. ``cache`` keeps each
    task's unperturbed probabilities across methods with the same targets, and (under
    ``"memo"``) the answers for perturbed inputs, which methods, layers and operators often share.
    ``top_k > 0`` adds the top-k removal metrics.
    """
    cache = {} if cache is None else cache
    rows = list(range(len(batch))) if rows is None else list(rows)
    where = {r: i for i, r in enumerate(rows)}
    per: dict[str, np.ndarray] = {}
    curves: list[dict] = []
    for task in dict.fromkeys(batch.tasks[r] for r in rows):
        idx = [r for r in rows if batch.tasks[r] == task]
        local = [where[r] for r in idx]
        sub = batch.select(idx)
        full = full_cached(sm, sub, task, idx, targets[local], s.eval_batch_size, cache)
        m, curve = faithfulness_per_example(sm, sub, scores[local], targets[local], s.ratios, rule, token, seed=s.seed,
                                            chunk=s.eval_batch_size, soft=soft, full=full,
                                            memo=cache.setdefault("memo", {}), soft_normalised=s.soft_normalised,
                                            cue_mass=s.cue_mass, top_k=top_k, soft_min_drop=s.soft_min_drop)
        for name, values in m.items():
            per.setdefault(name, np.full(len(batch), np.nan))[idx] = values
        curves += [{"task": task, **row} for row in curve]
    return per, curves


def ig_rows(tasks: list[str], n: int) -> list[int]:
    """The examples integrated gradients runs on: all (``n = 0``) or the first ``n // n_tasks`` of each task.

    >>> ig_rows(["a", "a", "b", "b"], 2), ig_rows(["a", "b"], 0)
    ([0, 2], [0, 1])
    """
    if n <= 0 or n >= len(tasks):
        return list(range(len(tasks)))
    per_task = max(1, n // len(set(tasks)))
    seen: dict[str, int] = {}
    out = []
    for i, task in enumerate(tasks):
        seen[task] = seen.get(task, 0) + 1
        if seen[task] <= per_task:
            out.append(i)
    return out


def attribute_all(sm: ScoredModel, batch: Batch, method: str, s: AttributeSettings, tokenizer,
                  info: dict) -> Attribution:
    """One method over the whole batch, ``s.batch_size`` examples per call."""
    parts = [attribute(sm, batch.select(slice(i, i + s.batch_size)), method, s, tokenizer, info)
             for i in range(0, len(batch), s.batch_size)]
    return Attribution.concat(parts)


def spaced_layers(n_states: int, max_layers: int) -> list[int]:
    """The layer indices whose layer scores get faithfulness metrics: all, or ``max_layers`` evenly spaced ones
    that always include the embeddings (0) and the last layer.

    >>> spaced_layers(31, 0)[-1], spaced_layers(31, 4)
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
    for layer in spaced_layers(result.layer_scores.shape[0], s.layerwise_max_layers):
        per, _ = faithfulness_by_task(sm, batch, result.layer_scores[layer], result.target_ids, s, rule, token,
                                      soft=False, cache=cache)
        rows.append({"layer": layer, **{k: v for k, v in summarise(per, batch.tasks).items() if "/" not in k}})
    return rows


def _operator_table(sm, batch, results: dict[str, Attribution], rows: dict[str, list[int]], s, tokenizer,
                    main: tuple[str, dict], cache: dict) -> list[dict]:
    """Hard faithfulness metrics of each method under every removal operator, with intervals and vs random."""
    table = []
    methods = [m for m in (s.operator_methods or list(results)) if m in results]
    for op in s.operators:
        try:
            rule, token = replacement_token(tokenizer, op, sm.kind)
        except ValueError as exc:  # e.g. no mask token in a causal LM's tokenizer
            table.append({"operator": op, "method": "", "metric": "", "available": False, "note": str(exc)})
            continue
        per_method = {}
        for method in methods:
            if rule == main[0]:
                per_method[method] = main[1][method]
            else:
                per_method[method], _ = faithfulness_by_task(sm, batch, results[method].scores,
                                                             results[method].target_ids, s, rule, token, soft=False,
                                                             cache=cache, rows=rows[method])
        for method, per in per_method.items():
            for metric in HARD_METRICS:
                iv = summarise({metric: per[metric]}, ["all"] * len(batch))
                row = {"operator": op, "method": method, "metric": metric, "available": True, "note": "",
                       "value": iv[metric], "ci_low": iv[metric + CI_LOW], "ci_high": iv[metric + CI_HIGH]}
                if "random" in per_method and method != "random":
                    d = paired(per[metric], per_method["random"][metric])
                    row.update(vs_random=d.estimate, vs_random_ci_low=d.low, vs_random_ci_high=d.high)
                table.append(row)
    return table


def _heatmap_rows(tasks: list[str], n: int) -> list[int]:
    """``n`` example indices, the first of each task before the second of any."""
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    order = [i for rank in range(len(tasks)) for rows in by_task.values() if rank < len(rows) for i in [rows[rank]]]
    return sorted(order[:n])


@dataclass
class _Study:
    """What every step of one model's study shares: the model, the inputs, the removal operator."""

    s: AttributeSettings
    name: str  # model name
    tokenizer: Any
    sm: ScoredModel
    batch: Batch
    rule: str  # the replacement operator in use (mask | pad | delete | mean)
    token: Any  # its token id (or mean embedding)
    info: dict  # recorded in every result's info
    out_dir: Path
    cache: dict = field(default_factory=dict)  # unperturbed probabilities and perturbed answers, shared by the methods
    bounds: Bounds | None = None  # the floor and the ceiling of top-k removal (top_k > 0)


@dataclass
class _MethodRun:
    result: Attribution
    rows: list[int]  # the batch rows this method scored (IG may run on a subset)
    per: dict[str, np.ndarray]  # per-example metrics
    metrics: dict
    curve: Any  # DataFrame: one row per removal ratio


def run_attribute(settings: AttributeSettings, model_folder: str | Path, data_root: str | Path,
                  out_dir: str | Path, device: str = "cpu", dtype: str = "float32", info: dict | None = None) -> dict:
    """Run the study for one model folder; write ``out_dir/<method>/...``; return summary metrics.

    ``info`` (the run record: model origin, seed, config hash, revision) goes into every result's info.
    """
    study = _prepare(settings, model_folder, data_root, Path(out_dir), device, dtype, info or {})
    if settings.top_k:
        study.bounds = compute_bounds(study.sm, study.batch, settings, study.rule, study.token, study.cache)
        write_bounds(study.bounds, study.batch, study.out_dir, _heatmap_rows(study.batch.tasks, settings.n_heatmaps),
                     study.info)
    runs = {method: _run_method(study, method)
            for method in tqdm(settings.methods, desc=f"attribute {study.name}")}
    summary = _summarise(study, runs)
    if settings.operators:
        summary.update(_write_operators(study, runs))
    summary.update(_write_figures_and_headline(study, runs, summary))
    if len(runs) > 1:
        summary.update(_write_rank_agreement(study, runs))
    return summary


def _prepare(s: AttributeSettings, model_folder, data_root, out_dir: Path, device: str, dtype: str,
             info: dict) -> _Study:
    """Load the model and the examples; refuse what the settings cannot run on, before any work."""
    from interpipe.models import load_model

    loaded = load_model(model_folder, device=device, dtype=dtype)
    kind = loaded.card.kind
    sm = ScoredModel(loaded.model, kind)  # fails here for a model without a head
    if s.layerwise and "normxlogit" in s.methods:
        sm.require_final_norm()  # layer-wise scores need it: refuse before any work, naming the model_type
    tasks = s.causal_tasks if kind == "causal_lm" else s.classifier_tasks
    batch = encode_rows(loaded.tokenizer, load_rows(data_root, tasks, s.split, s.n_examples), kind, s.max_length,
                        s.target, s.scored_position, s.causal_target)
    sm.check_length(batch.input_ids.shape[1])
    sm.check_targets(batch.target_ids)
    rule, token = replacement_token(loaded.tokenizer, s.replacement, kind)
    settings_json = json.dumps(asdict(s), sort_keys=True)
    target = s.causal_target if kind == "causal_lm" else "probability"
    info = {"model": loaded.card.name, "kind": kind, "tasks": list(tasks), "replacement": rule, "target": target,
            "settings": asdict(s), "settings_hash": hashlib.sha256(settings_json.encode()).hexdigest()[:12], **info}
    return _Study(s, loaded.card.name, loaded.tokenizer, sm, batch, rule, token, info, out_dir)


def _run_method(st: _Study, method: str) -> _MethodRun:
    """Attribute with one method (timed), score its faithfulness (not timed), write its folder."""
    import pandas as pd

    from interpipe.io import save_figure, write_frame

    s, batch = st.s, st.batch
    rows = ig_rows(batch.tasks, s.ig_n_examples) if method == "integrated_gradients" else list(range(len(batch)))
    sub = batch.select(rows)
    result = attribute_all(st.sm, sub, method, s, st.tokenizer, {**st.info, "method": method})
    result.check_finite()  # NaN/Inf are reported as an error naming the examples, never written
    per, curve = faithfulness_by_task(st.sm, batch, result.scores, result.target_ids, s, st.rule, st.token,
                                      cache=st.cache, rows=rows, top_k=s.top_k)
    metrics = summarise(per, batch.tasks)
    if st.bounds is not None:
        metrics.update(normalised_metrics(per[TOP_K], st.bounds.floor, st.bounds.oracle, batch.tasks))
    metrics["n_examples_with_cues"] = int(np.isfinite(per["plausibility_map"]).sum())
    metrics.update(seconds=result.seconds, seconds_per_example=result.seconds / len(sub),
                   examples_per_second=len(sub) / max(result.seconds, 1e-9), n_examples=len(sub))
    folder = st.out_dir / method
    result.save(folder, overwrite=True)
    write_frame(folder / "faithfulness_curve.csv", pd.DataFrame(curve))
    write_frame(folder / "per_example.csv", pd.DataFrame({"example_id": batch.example_ids, "task": batch.tasks,
                                                           **per}).iloc[rows])
    if result.diagnostics.get("relative_gap"):
        metrics.update(relative_gap_summary(result.diagnostics, s.ig_tolerance))
        write_frame(folder / "completeness.csv", pd.DataFrame({"example_id": sub.example_ids, "task": sub.tasks,
                                                                **result.diagnostics}))
    if result.layer_scores is not None:
        layers = pd.DataFrame(_layerwise(st.sm, batch, result, s, st.rule, st.token, st.cache))
        write_frame(folder / "layerwise.csv", layers)
        save_figure(curve_figure({method: layers}, "layer", f"{method} from each layer's states (0 = embeddings)"),
                    folder / "layerwise.png")
    if s.n_heatmaps:
        save_figure(result.plot(_heatmap_rows(sub.tasks, s.n_heatmaps)), folder / "heatmap.png", dpi=100)
    return _MethodRun(result, rows, per, metrics, pd.DataFrame(curve))


def _summarise(st: _Study, runs: dict[str, _MethodRun]) -> dict:
    """Paired comparisons into every method's metrics.json; the flat ``<method>/<metric>`` summary."""
    from interpipe.io import write_json

    _compare({m: r.per for m, r in runs.items()}, {m: r.metrics for m, r in runs.items()}, st.out_dir)
    summary: dict = {"n_examples": len(st.batch)}
    for method, run in runs.items():
        write_json(st.out_dir / method / "metrics.json", run.metrics)
        summary.update({f"{method}/{k}": v for k, v in run.metrics.items()
                        if "/" not in k and k.removesuffix(CI_LOW).removesuffix(CI_HIGH) in SUMMARY_KEYS})
        summary.update({f"{method}/{k}": v for k, v in run.metrics.items() if k.startswith(("vs_random/", "vs_ig/"))})
    return summary


def _write_operators(st: _Study, runs: dict[str, _MethodRun]) -> dict:
    """``operators.csv``: the hard metrics of every method under every removal operator."""
    import pandas as pd

    from interpipe.io import write_frame

    results = {m: r.result for m, r in runs.items()}
    rows = {m: r.rows for m, r in runs.items()}
    per_method = {m: r.per for m, r in runs.items()}
    table = pd.DataFrame(_operator_table(st.sm, st.batch, results, rows, st.s, st.tokenizer, (st.rule, per_method),
                                         st.cache))
    write_frame(st.out_dir / "operators.csv", table)
    out = {}
    for r in table[table["available"]].itertuples():
        key = f"{r.method}/by_{r.operator}/{r.metric}"
        out.update({key: r.value, key + CI_LOW: r.ci_low, key + CI_HIGH: r.ci_high})
    return out


def _write_figures_and_headline(st: _Study, runs: dict[str, _MethodRun], summary: dict) -> dict:
    """``headline.csv`` (the bounded rows first), its figures; returns the bounded numbers for the summary."""
    import pandas as pd

    from interpipe.headline import FILE
    from interpipe.io import save_figure, write_frame

    save_figure(curve_figure({m: r.curve for m, r in runs.items()}, "ratio",
                             f"{st.name}: removal curves (AOPC = mean over ratios)"), st.out_dir / "faithfulness.png")
    headline = [m for m in HEADLINE_METHODS if m in runs]
    bounded = []
    if st.bounds is not None:
        order = headline + [m for m in runs if m not in headline]
        bounded = bounded_rows(st.name, {m: runs[m].per[TOP_K] for m in order}, st.bounds.floor, st.bounds.oracle,
                               st.batch.tasks)
        save_figure(normalised_figure(bounded, st.name), st.out_dir / "headline_normalised.png")
    rows = bounded + headline_rows(st.name, summary, headline, st.s.ig_tolerance)
    write_frame(st.out_dir / FILE, pd.DataFrame(rows))
    save_figure(headline_figure(summary, st.name, headline), st.out_dir / "headline_faithfulness.png")
    return _bounded_summary(bounded)


def _bounded_summary(rows: list[dict]) -> dict:
    """``oracle/<task>/comprehensiveness_k`` (+ interval, floor, ``informative``) for the stage's metrics."""
    out = {}
    for r in rows:
        if r["method"] != "oracle" or r["metric"] != TOP_K:
            continue
        key = f"oracle/{r['task']}/{TOP_K}"
        out.update({key: r["value"], key + CI_LOW: r["ci_low"], key + CI_HIGH: r["ci_high"],
                    f"floor/{r['task']}/{TOP_K}": r["baseline_value"], f"oracle/{r['task']}/vs_floor": r["diff"],
                    f"oracle/{r['task']}/vs_floor{CI_LOW}": r["diff_ci_low"],
                    f"oracle/{r['task']}/vs_floor{CI_HIGH}": r["diff_ci_high"],
                    f"oracle/{r['task']}/informative": float(r["informative"])})
    return out


def _write_rank_agreement(st: _Study, runs: dict[str, _MethodRun]) -> dict:
    """Spearman between every pair of methods on the examples all of them scored."""
    from interpipe.io import save_figure, write_frame

    common = sorted(set.intersection(*(set(r.rows) for r in runs.values())))  # IG may run on a subset
    all_scores = {m: _common_scores(r.result, r.rows, common, st.batch) for m, r in runs.items()}
    table = rank_agreement(all_scores, st.batch.eligible[common])
    write_frame(st.out_dir / "rank_agreement.csv", table.reset_index(names="method"))
    save_figure(rank_figure(table), st.out_dir / "rank_agreement.png")
    out = {}
    for method in all_scores:
        others = [m for m in all_scores if m not in (method, "random")]
        if others:
            out[f"{method}/rank_agreement_mean"] = float(table.loc[method, others].mean())
    return out


def _compare(per_method: dict, method_metrics: dict, out_dir: Path) -> None:
    """Paired differences vs random and vs IG into each method's metrics; the win-rate table."""
    import pandas as pd

    from interpipe.io import write_frame

    for label, reference in (("vs_random", "random"), ("vs_ig", "integrated_gradients")):
        for method, diffs in comparisons(per_method, reference, label).items():
            method_metrics[method].update(diffs)
    wins = pd.DataFrame(win_table(per_method))
    if len(wins):
        write_frame(out_dir / "winrate.csv", wins)
        for method, group in wins.groupby("method"):
            method_metrics[method]["win_rate_vs_random"] = float(group["better_than_random"].mean())


def _common_scores(result: Attribution, rows: list[int], common: list[int], batch: Batch) -> torch.Tensor:
    """A method's scores on the examples every method attributed, padded to the batch width: (common, pos)."""
    where = {r: i for i, r in enumerate(rows)}
    scores = result.scores[[where[r] for r in common]]
    return torch.nn.functional.pad(scores, (0, batch.input_ids.shape[1] - scores.shape[1]))
