"""The IOI head-class step of the circuit study: evidence per head, ``ioi_heads.csv`` and its figure.

Per head (Wang et al. 2022, §3): the attention scores and direct effect of
:func:`interpipe.circuits.heads.head_evidence`; the OV copy score and negative copy score
(:mod:`.copying`) of the ``copy_heads`` heads with the largest |direct effect|; and the
S-inhibition path-patching effect (:mod:`.inhibition`): corrupted (ABC) output of each of
``inhibition_senders`` candidate heads patched into the queries of the ``name_movers`` receivers
only, on the first ``inhibition_prompts`` prompts of the selection half. Columns of heads that were not scored are empty (NaN).

The ``class`` column is :func:`~interpipe.circuits.heads.classify` applied once the copy scores are
in: the one head-class rule (other studies read those classes). Receivers of the S-inhibition path:
the ``name_movers`` heads of that class with the largest direct effect (none: the path is not
patched). Senders: the heads of earlier layers that attend most from the final position to S (Wang
et al.'s S-inhibition heads attend to S2 from END). A sender is marked ``s_inhibition = 1`` when
removing its path to the receivers lowers the normalised logit difference by at least
:data:`INHIBITION_EFFECT`. :func:`mark_circuit` adds where each head stands in the circuit's ranking,
so a head of a class that is not in the circuit shows why (a name mover whose single ablation the
rest of the model compensates ranks low).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from interpipe.circuits import dla, figures
from interpipe.circuits.copying import copy_scores, name_rows
from interpipe.circuits.heads import COPYING, classify, head_evidence, ioi_positions
from interpipe.circuits.inhibition import s_inhibition_patch
from interpipe.circuits.metrics import NormalizedLogitDiff
from interpipe.circuits.paths import path_patching_support
from interpipe.io import save_figure

HEAD_CLASS_TASKS = ("ioi",)  # tasks whose prompts have IO once and S twice (interpipe.circuits.heads)
INHIBITION_EFFECT = 0.05  # an S-inhibition head's path to the name movers carries >= 5 % of the clean - corrupted gap


def resid_after_first_block(bridge: Any) -> str:
    """The hook holding the residual stream after block 0 (a hook :func:`dla.dla_hooks` already captures)."""
    return "blocks.1.hook_resid_pre" if bridge.cfg.n_layers > 1 else "ln_final.hook_in"


def capture_hooks(bridge: Any) -> list[str]:
    """Hooks the head-class step reads beyond :func:`dla.dla_hooks` (attention patterns of every layer)."""
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]


def receivers(frame: Any, n: int) -> list[tuple[int, int]]:
    """The ``n`` name-mover receivers: the heads of that class (``frame["class"]``) of largest direct effect."""
    movers = frame[frame["class"] == "name mover"]
    top = movers.sort_values("direct_effect", ascending=False).head(n)
    return [(int(r.layer), int(r.head)) for r in top.itertuples()]


def senders(frame: Any, targets: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The ``n`` heads before the last receiver's layer that attend most from the end to S."""
    if not targets:
        return []
    last = max(layer for layer, _ in targets)
    targeted = [(int(l), int(h)) in set(targets) for l, h in zip(frame["layer"], frame["head"])]
    early = frame[(frame["layer"] < last) & ~np.array(targeted, dtype=bool)]
    top = early.sort_values("attn_end_s", ascending=False).head(n)
    return [(int(r.layer), int(r.head)) for r in top.itertuples()]


def _copy_columns(bridge: Any, batch: Any, acts: dict, frame: Any, n: int, positions: dict) -> None:
    frame["copy_score"] = np.nan
    frame["negative_copy_score"] = np.nan
    if n <= 0:
        return
    chosen = frame.reindex(frame["direct_effect"].abs().sort_values(ascending=False).index).head(n)
    resid, names = name_rows(batch, acts[resid_after_first_block(bridge)], positions)
    scores = copy_scores(bridge, resid, names, [(int(r.layer), int(r.head)) for r in chosen.itertuples()])
    for (layer, head), (pos, neg) in scores.items():
        at = (frame["layer"] == layer) & (frame["head"] == head)
        frame.loc[at, ["copy_score", "negative_copy_score"]] = [pos, neg]


def _inhibition_columns(bridge: Any, batch: Any, gaps: Any, frame: Any, settings: Any) -> Any:
    """S-inhibition path effects on the selection half (columns); returns the result, or None when not run."""
    frame["name_mover_receiver"] = 0
    frame["s_inhibition_effect"] = np.nan
    frame["s_inhibition"] = 0
    targets = receivers(frame, settings.name_movers)
    sources = senders(frame, targets, settings.inhibition_senders)
    if not sources or path_patching_support(bridge) is not None:
        return None
    rows = batch.half_rows()[0][: settings.inhibition_prompts]
    half = batch.subset(rows)
    lds = gaps[:, rows]  # (2, half): clean and corrupted logit differences of the half
    metric = NormalizedLogitDiff(half.answer_ids, half.foil_ids, clean=float(lds[0].mean()), corrupted=float(lds[1].mean()))
    result = s_inhibition_patch(bridge, half, sources, targets, "noise", metric, settings.memory_mb)
    effect = result.effect()  # (layer, head)
    for layer, head in targets:
        frame.loc[(frame["layer"] == layer) & (frame["head"] == head), "name_mover_receiver"] = 1
    for layer, head in sources:
        frame.loc[(frame["layer"] == layer) & (frame["head"] == head), "s_inhibition_effect"] = float(effect[layer, head])
    frame["s_inhibition"] = (frame["s_inhibition_effect"] <= -INHIBITION_EFFECT).astype(int)
    return result


def head_classes(bridge: Any, batch: Any, direct: Any, acts: dict, gaps: Any, settings: Any, metrics: dict,
                 out: Path, title: str) -> tuple[Any, list]:
    """IOI head evidence and classes of every head (the ``ioi_heads.csv`` frame, ``headline_ioi_heads.png``).

    Args:
        direct: the DLA result of the clean run; ``acts``: the clean capture at :func:`dla.dla_hooks`
            and :func:`capture_hooks`; ``gaps``: per-prompt clean and corrupted logit differences ``(2, batch)``.

    Returns:
        (the frame, the S-inhibition result in a list, empty when it did not run).
    """
    import pandas as pd

    from interpipe.circuits.results import CircuitResult

    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    positions = ioi_positions(batch)
    frame = pd.DataFrame(head_evidence(bridge, batch, dla.dla_head_grid(direct, n_layers, n_heads).values, acts))
    _copy_columns(bridge, batch, acts, frame, settings.copy_heads, positions)
    frame["class"] = [classify(row) for row in frame.to_dict("records")]  # the one rule, on all the evidence
    inhibition = _inhibition_columns(bridge, batch, gaps, frame, settings)
    for name, count in frame["class"].value_counts().items():
        if name:
            metrics[f"heads_{name.split(' (')[0].replace(' ', '_').replace('-', '_')}"] = int(count)
    metrics["heads_S_inhibition_path"] = int(frame["s_inhibition"].sum())
    metrics["heads_copying"] = int((frame["copy_score"] >= COPYING).sum())
    grid = lambda column: torch.tensor(frame[column].to_numpy(dtype=float)).reshape(n_layers, n_heads)  # noqa: E731
    maps = [CircuitResult("direct effect on IO − S", grid("direct_effect"), ("layer", "head")),
            CircuitResult("attention end→IO minus end→S", grid("attn_end_io") - grid("attn_end_s"), ("layer", "head")),
            CircuitResult("attention S2→S1 (duplicate)", grid("attn_s2_s1"), ("layer", "head")),
            CircuitResult("attention S2→S1+1 (induction)", grid("attn_s2_s1_next"), ("layer", "head")),
            CircuitResult("OV copy − negative copy score (0: not scored)",
                          torch.nan_to_num(grid("copy_score") - grid("negative_copy_score")), ("layer", "head")),
            CircuitResult("S-inhibition: path into name movers' q (0: not a sender)",
                          torch.nan_to_num(grid("s_inhibition_effect")), ("layer", "head"))]
    save_figure(figures.heatmaps(maps, f"{title}: IOI head evidence"), out / "headline_ioi_heads.png")
    return frame, [inhibition] if inhibition is not None else []


def mark_circuit(frame: Any, components: list, ranking: list) -> Any:
    """``frame`` with ``in_circuit`` (the selected circuit's heads), ``circuit_rank`` (0: first) and
    ``rank_score`` (the |effect| that ranked it; empty when no circuit was selected)."""
    place = {c.name: (i, abs(score)) for i, (c, score) in enumerate(ranking)}
    frame = frame.copy()
    frame["in_circuit"] = frame["component"].isin([c.name for c in components]).astype(int)
    frame["circuit_rank"] = [place[n][0] if n in place else np.nan for n in frame["component"]]
    frame["rank_score"] = [place[n][1] if n in place else np.nan for n in frame["component"]]
    return frame
