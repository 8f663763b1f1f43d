"""Edge-level circuits: the edge graph, EAP / EAP-IG scores, exact edge patching, MIB curves (CPR, CMD).

:mod:`.graph` (senders, receivers, edges of a model, from its architecture description),
:mod:`.hooks` (where they live on a ``TransformerBridge``; every hook checked to fire),
:mod:`.patching` (exact edge patching, many circuits per forward), :mod:`.scores` (EAP, EAP-IG),
:mod:`.curves` (circuits at MIB's budgets, CPR / CMD), :mod:`.results` (:class:`EdgeCurves`) and
:mod:`.study` (one task as one call). See ``docs/edges.md``.
"""

from interpipe.circuits.edges.curves import MIB_BUDGETS, edge_counts, random_circuits, top_circuits
from interpipe.circuits.edges.graph import EdgeGraph
from interpipe.circuits.edges.patching import evaluate_circuits, patched_logits, sender_outputs
from interpipe.circuits.edges.results import EdgeCurves
from interpipe.circuits.edges.scores import METHODS, edge_scores
from interpipe.circuits.edges.study import EdgeRun, edge_study

__all__ = ["MIB_BUDGETS", "edge_counts", "random_circuits", "top_circuits", "EdgeGraph", "evaluate_circuits",
           "patched_logits", "sender_outputs", "EdgeCurves", "METHODS", "edge_scores", "EdgeRun", "edge_study"]
