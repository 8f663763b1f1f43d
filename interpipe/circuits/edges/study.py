"""Edge circuits of one task as one call: scores on the selection prompts, curves on held-out prompts.

:func:`edge_study` takes the two halves the node-circuit study already split (selection, held
out), scores every edge on the first ``prompts`` selection prompts by each method (EAP, EAP-IG),
and evaluates on the first ``prompts`` held-out prompts, by exact edge patching: the top-scored
circuits at every budget, random circuits of the same sizes (``seeds`` draws: the floor) and the
edges induced by the node circuit. With ``exact_max_edges`` at least the graph's edge count it
also patches every edge alone (on the selection prompts) and reports the rank correlation of each
method's scores with those exact effects.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from interpipe.circuits.bridge import PromptBatch, architecture
from interpipe.circuits.edges import curves
from interpipe.circuits.edges.graph import EdgeGraph
from interpipe.circuits.edges.patching import evaluate_circuits, sender_outputs
from interpipe.circuits.edges.results import EdgeCurves
from interpipe.circuits.edges.scores import edge_scores
from interpipe.circuits.metrics import logit_diff
from interpipe.circuits.patching import task_metric
from interpipe.stats import bootstrap


@dataclass
class EdgeRun:
    """What :func:`edge_study` needs beside the model and the prompts (``circuits.edge_*`` settings)."""

    methods: Sequence[str] = ("eap-ig-inputs", "eap")
    budgets: Sequence[float] = curves.MIB_BUDGETS
    steps: int = 5
    prompts: int = 8
    seeds: int = 3
    exact_max_edges: int = 0
    memory_mb: float = 512.0
    progress: bool = False


def edge_study(bridge: Any, select: PromptBatch, heldout: PromptBatch, run: EdgeRun,
               node_circuit: Sequence[Any] = (), info: dict | None = None) -> EdgeCurves:
    """Score, select and evaluate edge circuits; returns their :class:`EdgeCurves` (not yet saved)."""
    start = time.perf_counter()
    graph = EdgeGraph.from_spec(architecture(bridge))
    select = select.subset(range(min(run.prompts, select.size)))
    heldout = heldout.subset(range(min(run.prompts, heldout.size)))
    scores = _scores(bridge, graph, select, run)
    counts = curves.edge_counts(graph.n_edges, run.budgets)
    ev = _Evaluation(bridge, graph, heldout, run)
    rows, summary = [], {"edges_total": float(graph.n_edges), "senders": float(graph.n_senders),
                         "receivers": float(graph.n_receivers), "eval_prompts": float(heldout.size),
                         "score_prompts": float(select.size)}
    circuits = {m: curves.top_circuits(s, graph.allowed, counts) for m, s in scores.items()}  # (budget, receiver, sender)
    circuits.update({f"random{i}": curves.random_circuits(graph.allowed, counts, i) for i in range(run.seeds)})
    if node_circuit:
        circuits["node_circuit"] = graph.induced(node_circuit)[None]
    ld = ev.logit_diffs(circuits)  # name -> (budget, prompt)
    for method in scores:
        summary.update(ev.curve(method, ld[method], counts, rows))
    summary.update(ev.random([ld[f"random{i}"] for i in range(run.seeds)], counts, rows))
    if node_circuit:
        summary.update(ev.node(ld["node_circuit"][0], int(circuits["node_circuit"].sum()), rows))
    if graph.n_edges <= run.exact_max_edges:
        summary.update(_exact_correlation(bridge, graph, select, scores, run))
    summary["seconds"] = time.perf_counter() - start
    summary = {k: v for k, v in summary.items() if math.isfinite(v)}  # undefined numbers (a constant ranking) are left out
    return EdgeCurves(rows, summary, {**(info or {}), "methods": list(scores), "budgets": list(run.budgets),
                                      "ig_steps": run.steps, "random_seeds": run.seeds,
                                      "gqa_kv_receivers": graph.n_kv_heads < graph.n_heads})


def key(method: str) -> str:
    """``eap-ig-inputs`` -> ``eap_ig_inputs`` (metric names)."""
    return method.replace("-", "_")


def rows_by(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def _scores(bridge: Any, graph: EdgeGraph, select: PromptBatch, run: EdgeRun) -> dict[str, torch.Tensor]:
    metric = task_metric(bridge, select)
    outputs = (sender_outputs(bridge, graph, select.clean_tokens, select.answer_pos)[0],
               sender_outputs(bridge, graph, select.corrupted_tokens, select.answer_pos)[0])
    return {m: edge_scores(bridge, graph, select, metric, m, run.steps, run.progress, outputs) for m in run.methods}


class _Evaluation:
    """Held-out evaluation: per-prompt logit differences of edge circuits by exact edge patching."""

    def __init__(self, bridge: Any, graph: EdgeGraph, batch: PromptBatch, run: EdgeRun) -> None:
        self.bridge, self.graph, self.batch, self.run = bridge, graph, batch, run
        self.corrupted, corrupted_logits = sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)
        _, clean_logits = sender_outputs(bridge, graph, batch.clean_tokens, batch.answer_pos)
        ld = lambda logits: logit_diff(logits, batch.answer_ids, batch.foil_ids).float().cpu().numpy()  # noqa: E731
        self.empty, self.full = ld(corrupted_logits), ld(clean_logits)  # (prompt,)
        self.prefix = min(batch.shared_prefix(), int(batch.answer_pos.min()))

    def logit_diffs(self, circuits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """``[circuit, prompt]`` logit differences of each named stack of circuits ``[circuit, receiver, sender]``
        (True = kept), evaluated together ordered by size: a forward's circuits then keep (or patch) few edges
        alike, and each receiver sums over only the senders they touch."""
        b = self.batch
        every = torch.cat(list(circuits.values()))  # (circuit, receiver, sender)
        order = every.flatten(1).sum(1).argsort(stable=True)
        score = lambda logits: logit_diff(logits, b.answer_ids, b.foil_ids)  # noqa: E731 - (variant, batch)
        ld = evaluate_circuits(self.bridge, self.graph, b.clean_tokens, b.answer_pos, self.corrupted, every[order],
                               score, self.run.memory_mb, self.run.progress, self.prefix).float().cpu().numpy()
        ld[order.numpy()] = ld.copy()  # back to the input order
        out, start = {}, 0
        for name, stack in circuits.items():
            out[name], start = ld[start:start + len(stack)], start + len(stack)
        return out

    def curve(self, method: str, ld: np.ndarray, counts: list[int], rows: list[dict], seed: int = -1) -> dict[str, float]:
        """Rows of one curve (``ld``: ``[budget, prompt]``) and its CPR / CMD with intervals."""
        s = curves.curve_summary(self.run.budgets, ld, self.empty, self.full)
        for i, (b, k) in enumerate(zip(self.run.budgets, counts)):
            rows.append({"method": method, "seed": seed, "budget": b, "edges": k, "faithfulness": s[f"f{i}"].estimate,
                         "ci_low": s[f"f{i}"].low, "ci_high": s[f"f{i}"].high})
        out = {}
        for name in ("cpr", "cmd"):
            out.update({f"{key(method)}_{name}": s[name].estimate, f"{key(method)}_{name}_ci_low": s[name].low,
                        f"{key(method)}_{name}_ci_high": s[name].high})
        return out

    def random(self, lds: list[np.ndarray], counts: list[int], rows: list[dict]) -> dict[str, float]:
        """The floor, from each seed's ``[budget, prompt]``: CPR / CMD of their mean logit differences
        (interval over prompts) and the range over seeds."""
        per_seed = [curves.areas(self.run.budgets, curves.faithfulness(ld, self.empty, self.full)) for ld in lds]
        for seed, ld in enumerate(lds):
            f = curves.faithfulness(ld, self.empty, self.full)
            rows += [{"method": "random", "seed": seed, "budget": b, "edges": k, "faithfulness": float(v),
                      "ci_low": float("nan"), "ci_high": float("nan")} for b, k, v in zip(self.run.budgets, counts, f)]
        out = self.curve("random", np.mean(lds, axis=0), counts, [])
        for i, name in enumerate(("cpr", "cmd")):
            out[f"random_{name}_seed_min"] = float(min(a[i] for a in per_seed))
            out[f"random_{name}_seed_max"] = float(max(a[i] for a in per_seed))
        return out

    def node(self, ld: np.ndarray, n: int, rows: list[dict]) -> dict[str, float]:
        """The node circuit's induced edges (``ld``: ``[prompt]``, ``n`` edges): their held-out faithfulness, and how
        many edges each method's circuit needs for the same faithfulness."""
        iv = bootstrap(ld, self.empty, self.full, statistic=lambda c, e, f: (np.mean(c) - np.mean(e)) / (np.mean(f) - np.mean(e)))
        by_method = rows_by(rows)
        rows.append({"method": "node_circuit", "seed": -1, "budget": n / self.graph.n_edges, "edges": n,
                     "faithfulness": iv.estimate, "ci_low": iv.low, "ci_high": iv.high})
        out = {"node_circuit_edges": float(n), "node_circuit_faithfulness": iv.estimate,
               "node_circuit_faithfulness_ci_low": iv.low, "node_circuit_faithfulness_ci_high": iv.high}
        for method, part in by_method.items():
            if method == "random":
                continue
            need = curves.edges_to_reach([r["edges"] for r in part], [r["faithfulness"] for r in part], iv.estimate)
            out[f"{key(method)}_reaches_node_faithfulness"] = float(need == need)  # 0: no budget reaches it (no size)
            if need == need and n:
                out[f"{key(method)}_edges_at_node_faithfulness"] = need
                out[f"{key(method)}_size_ratio_to_node"] = need / n
        return out


def _exact_correlation(bridge: Any, graph: EdgeGraph, batch: PromptBatch, scores: dict, run: EdgeRun) -> dict[str, float]:
    """Spearman correlation of each method's scores with every edge patched alone (exact, selection prompts)."""
    from scipy.stats import spearmanr

    edges = graph.edges()  # (n_edges, 2): (receiver, sender)
    single = torch.ones(len(edges), graph.n_receivers, graph.n_senders, dtype=torch.bool)
    single[torch.arange(len(edges)), edges[:, 0], edges[:, 1]] = False  # every edge but one kept
    metric = task_metric(bridge, batch)
    corrupted, _ = sender_outputs(bridge, graph, batch.corrupted_tokens, batch.answer_pos)
    prefix = min(batch.shared_prefix(), int(batch.answer_pos.min()))
    effect = evaluate_circuits(bridge, graph, batch.clean_tokens, batch.answer_pos, corrupted, single,
                               lambda logits: metric(logits) - 1.0, run.memory_mb, run.progress, prefix)  # (edge,)
    out = {}
    for method, s in scores.items():
        est = s[edges[:, 0], edges[:, 1]]
        out[f"{key(method)}_rank_corr_exact"] = float(spearmanr(est.numpy(), effect.float().cpu().numpy()).statistic)
    return out
