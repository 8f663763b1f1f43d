"""What the circuit study reports across tasks: ``headline.csv``, ``reuse.csv`` and ``overlap.json``.

A task's circuit is *reported* (in the headline and in reuse) only when it is a circuit that held:

* **smaller than the model**: a top-k circuit below the whole pool reached the faithfulness target
  on the selection half. Where only the whole pool did, its faithfulness is 1 by construction and
  its random baseline is the model too: the headline says no circuit was found, and the task is
  listed in ``overlap.json`` under ``no_circuit_below_model``, never compared;
* **passing its own held-out check**: the 95 % interval of its held-out faithfulness lies above the
  target (Wang et al. 2022's faithfulness, reported on prompts the selection never saw). A circuit
  that fails is listed under ``failed_heldout`` and compared with nothing.

Every overlap of two circuits' heads (Jaccard, containment; Merullo et al. 2024) comes with what
two random head sets of the same sizes from the same pool give
(:func:`interpipe.circuits.discovery.chance_overlap`). Every solved task's faithfulness curve is
summarised as MIB does (Mueller et al. 2025): CPR and CMD with their intervals and the ablation
that produced them, whether or not a circuit was found (they describe the ranking's curve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interpipe.circuits import discovery, scoring
from interpipe.components import Component, heads_of
from interpipe.io import write_frame, write_json
from interpipe.stats import bootstrap

HEADLINE_COLUMNS = ["model", "task", "method", "metric", "value", "ci_low", "ci_high", "baseline", "baseline_value",
                    "solved", "note"]
REUSE_COLUMNS = ["circuit_of", "scored_on", "jaccard", "jaccard_chance", "containment", "containment_chance",
                 "faithfulness", "faithfulness_ci_low", "faithfulness_ci_high", "size_a", "size_b", "pool_heads"]
NO_CIRCUIT = ("no top-k circuit smaller than the model reached the faithfulness target on the selection half; "
              "the whole model (faithfulness 1 by construction) is not a circuit")


@dataclass
class TaskCircuit:
    """What cross-task reuse needs of one solved task: its circuit and the scorer of its held-out half."""

    components: list[Component]
    scorer: scoring.Scorer
    smaller_than_model: bool = True  # False: no circuit below the whole pool reached the target (nothing to compare)
    passed_heldout: bool = True  # False: its held-out faithfulness interval reaches below the target
    ranking: list[tuple[Component, float]] = field(default_factory=list)  # every pool component, highest |score| first

    @property
    def reported(self) -> bool:
        """Whether the circuit is reported and compared: smaller than the model and passing its held-out check."""
        return self.smaller_than_model and self.passed_heldout


def circuit_status(m: dict[str, Any], target: float) -> str:
    """Why a solved task's circuit is not reported ("" when it is), from its ``metrics.json`` numbers."""
    if not m.get("target_reached"):
        return NO_CIRCUIT
    if not m.get("heldout_above_target"):
        return (f"the selected circuit failed its held-out check: faithfulness {m['faithfulness']:.3g} "
                f"[{m['faithfulness_ci_low']:.3g}, {m['faithfulness_ci_high']:.3g}] on "
                f"{int(m.get('heldout_prompts', 0))} held-out prompts reaches below the target {target:g}")
    return ""


def headline_rows(model: str, task: str, m: dict[str, Any], ablated: str, target: float) -> list[dict[str, Any]]:
    """The numbers a results section quotes for one task: the logit gap; for a solved task the curve's
    CPR and CMD (``ablated``: what the curve's circuits ablate, stated beside them); and the circuit's
    numbers only for a circuit that is reported (else one ``circuit_found = 0`` row saying why)."""
    iv = lambda key: (m.get(key), m.get(key + "_ci_low"), m.get(key + "_ci_high"))  # noqa: E731
    rows = [("model", "logit_gap", *iv("logit_gap"), "corrupted run", 0.0, "")]
    if m.get("solved"):
        curve = f"MIB normalisation over the selection half's faithfulness curve; {ablated}"
        rows += [("circuit", "cpr", *iv("cpr"), "the model at every size", 1.0, curve),
                 ("circuit", "cmd", *iv("cmd"), "the model at every size", 0.0, curve)]
        status = circuit_status(m, target)
        if status:
            rows.append(("circuit", "circuit_found", 0.0, None, None, "", None, status))
        else:
            rows += [("circuit", "faithfulness", *iv("faithfulness"), "random circuit, same size",
                      m.get("random_faithfulness"), ""),
                     ("circuit", "faithfulness_per_prompt", *iv("faithfulness_per_prompt"), "corrupted run", 0.0, ""),
                     ("circuit", "excess_over_random", *iv("excess_over_random"), "random circuit, same size", 0.0, ""),
                     ("circuit", "circuit_accuracy", *iv("circuit_accuracy"), "full model", m.get("heldout_accuracy"), ""),
                     ("circuit", "circuit_size", m["circuit_size"], None, None, "pool size", m["pool_size"], "")]
        rows += edge_rows(m)
    return [{"model": model, "task": task, "method": method, "metric": name, "value": v, "ci_low": lo, "ci_high": hi,
             "baseline": base, "baseline_value": bv, "solved": int(m.get("solved", 0)), "note": note}
            for method, name, v, lo, hi, base, bv, note in rows]


EDGE_METHOD_KEYS = ("eap_ig_inputs", "eap_ig_activations", "eap")


def edge_rows(m: dict[str, Any]) -> list[tuple]:
    """Headline rows of a task's edge circuits (``edge_*`` metrics, :mod:`interpipe.circuits.edges`): each method's
    CPR and CMD beside random edge sets of the same sizes, the random floor, and the edges each method needs to
    match the node circuit's held-out faithfulness beside the node circuit's own edge count."""
    if "edge_random_cpr" not in m:
        return []
    iv = lambda key: (m.get(key), m.get(key + "_ci_low"), m.get(key + "_ci_high"))  # noqa: E731
    note = (f"MIB faithfulness curve of edge circuits (of {int(m.get('edge_edges_total', 0))} edges) on "
            f"{int(m.get('edge_eval_prompts', 0))} held-out prompts, exact edge patching; docs/edges.md")
    rows = []
    for k in (k for k in EDGE_METHOD_KEYS if f"edge_{k}_cpr" in m):
        rows += [(f"edge_{k}", "cpr", *iv(f"edge_{k}_cpr"), "random edges, same sizes", m["edge_random_cpr"], note),
                 (f"edge_{k}", "cmd", *iv(f"edge_{k}_cmd"), "random edges, same sizes", m["edge_random_cmd"], note)]
        if f"edge_{k}_edges_at_node_faithfulness" in m:
            rows.append((f"edge_{k}", "edges_at_node_faithfulness", m[f"edge_{k}_edges_at_node_faithfulness"], None, None,
                         "node circuit's induced edges", m.get("edge_node_circuit_edges"),
                         f"edges the circuit needs for the node circuit's held-out faithfulness "
                         f"{m.get('edge_node_circuit_faithfulness', float('nan')):.3g}"))
        elif m.get(f"edge_{k}_reaches_node_faithfulness") == 0:
            rows.append((f"edge_{k}", "reaches_node_faithfulness", 0.0, None, None, "node circuit's induced edges",
                         m.get("edge_node_circuit_edges"), "no budget's circuit reaches the node circuit's held-out "
                         f"faithfulness {m.get('edge_node_circuit_faithfulness', float('nan')):.3g}"))
    rows += [("edge_random", "cpr", *iv("edge_random_cpr"), "", None, note),
             ("edge_random", "cmd", *iv("edge_random_cmd"), "", None, note)]
    return rows


def headline_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def _pair(a: str, b: str, found: dict[str, TaskCircuit], row_ld: Any) -> dict[str, Any]:
    """One ``reuse.csv`` row: A's circuit scored on B's held-out half, and their head overlap beside chance."""
    scorer = found[b].scorer
    heads_a, heads_b = heads_of(found[a].components), heads_of(found[b].components)
    pool = len(heads_of(scorer.components))
    chance = discovery.chance_overlap(len(heads_a), len(heads_b), pool)
    iv = bootstrap(row_ld, scorer.clean_ld, statistic=scoring.ratio_of_means)
    return {"circuit_of": a, "scored_on": b, "jaccard": discovery.circuit_overlap(heads_a, heads_b),
            "jaccard_chance": chance["jaccard"], "containment": discovery.circuit_containment(heads_a, heads_b),
            "containment_chance": chance["containment"], "faithfulness": iv.estimate, "faithfulness_ci_low": iv.low,
            "faithfulness_ci_high": iv.high, "size_a": len(found[a].components),
            "size_b": len(found[b].components), "pool_heads": pool}


def reuse(found: dict[str, TaskCircuit], scope: list[str], out_dir: Path) -> dict[str, float]:
    """Head overlap (Jaccard, containment, each beside chance) and cross-task faithfulness for every
    ordered pair of the tasks of ``scope`` whose circuits are reported (:attr:`TaskCircuit.reported`).

    Cross-task faithfulness of (A, B): A's circuit scored on B's held-out half (Merullo et al. 2024;
    Hanna et al. 2024). Unsolved tasks, tasks with no circuit below the model and circuits that
    failed their held-out check are listed apart. Written to ``reuse.csv`` and ``overlap.json``.
    """
    import pandas as pd

    tasks = [t for t in scope if t in found and found[t].reported]
    metrics: dict[str, float] = {}
    rows = []
    for b in tasks:
        others = [a for a in tasks if a != b]
        ld, _ = found[b].scorer.circuits([found[a].components for a in others])  # (other task, prompt of b), one batched run
        for a, row_ld in zip(others, ld):
            row = _pair(a, b, found, row_ld)
            rows.append(row)
            metrics[f"reuse/{a}_in_{b}/containment"] = row["containment"]
            metrics[f"reuse/{a}_in_{b}/containment_chance"] = row["containment_chance"]
            metrics.update({f"reuse/{a}_on_{b}/{k}": row[k] for k in REUSE_COLUMNS if k.startswith("faithfulness")})
            if tasks.index(a) < tasks.index(b):
                metrics[f"reuse/{a}_{b}/jaccard"] = row["jaccard"]
                metrics[f"reuse/{a}_{b}/jaccard_chance"] = row["jaccard_chance"]
    write_frame(out_dir / "reuse.csv", pd.DataFrame(rows, columns=REUSE_COLUMNS))
    write_json(out_dir / "overlap.json", {
        "tasks": tasks, "unsolved": [t for t in scope if t not in found],
        "no_circuit_below_model": [t for t in scope if t in found and not found[t].smaller_than_model],
        "failed_heldout": [t for t in scope if t in found and found[t].smaller_than_model and not found[t].passed_heldout],
        "heads": {t: [c.name for c in heads_of(found[t].components)] for t in tasks},
        "definition": "jaccard = |A∩B|/|A∪B| of heads; containment = |A∩B|/|A|; *_chance = their expectation for "
                      "random head sets of the same sizes from the same pool (hypergeometric); faithfulness = A's "
                      "circuit scored on B's held-out prompts"})
    return metrics
