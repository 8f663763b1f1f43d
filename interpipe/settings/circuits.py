"""Settings of the circuit study (the ``circuits`` config group) and their allowed values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from interpipe.data.prepare import CAUSAL_TASKS

CIRCUIT_TASKS = tuple(CAUSAL_TASKS)  # tasks with answer/foil words and same-length corrupted prompts
SELECTIONS = ("threshold", "top_k", "faithfulness")  # circuit selection rules (interpipe.circuits.discovery)
ABLATIONS = ("zero", "mean", "resample")  # how components outside a circuit are removed (interpipe.circuits.ablation)
SENDER_POSITIONS = ("all", "answer")  # where a path-patching sender's write is taken (interpipe.circuits.paths)

# grid name -> (activation, axes) of the exact and attribution patching runs
GRIDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": ("resid_pre", ("layer", "pos")), "attn_out": ("attn_out", ("layer", "pos")),
    "mlp_out": ("mlp_out", ("layer", "pos")), "z": ("z", ("layer", "head")), "z_pos": ("z", ("layer", "pos", "head")),
    "q": ("q", ("layer", "head")), "k": ("k", ("layer", "head")), "v": ("v", ("layer", "head")),
    "pattern": ("pattern", ("layer", "head")), "pattern_pos": ("pattern", ("layer", "head", "pos")),
    "attn_layer": ("attn_out", ("layer",)), "mlp_layer": ("mlp_out", ("layer",)),  # whole layer, all positions
}
EDGE_METHODS = ("eap-ig-inputs", "eap-ig-activations", "eap")  # edge scores (interpipe.circuits.edges.scores)
EDGE_BUDGETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]  # MIB's circuit sizes, fractions of all edges
RANK_BY = ("denoise", "noise", "both", "ablation", "all")  # effects that rank components (interpipe.circuits.study)
RANK_WITH = ("exact", "attribution")


@dataclass
class CircuitSettings:
    """Settings of the circuit study (``conf/circuits/``)."""

    tasks: list[str] = field(default_factory=lambda: ["ioi", "colored_objects", "laundry_list", "sva", "induction"])  # the embedded tasks with same-length corrupted prompts
    n_prompts: int = 32  # prompts per task, half to select the circuit, half to report it: small keeps the pipeline in budget
    task_prompts: dict[str, int] = field(default_factory=dict)  # per-task prompt counts overriding n_prompts (e.g. {ioi: 64})
    split: str = "test"  # held-out prompts the model never trained on
    on_mismatch: str = "error"  # error | skip prompts whose clean/corrupted token lengths differ
    grids: list[str] = field(default_factory=lambda: ["resid_pre", "z", "q", "k", "v", "pattern"])  # exact patching grids
    task_grids: dict[str, list[str]] = field(default_factory=dict)  # per-task exact grids overriding grids (e.g. {ioi: [z]})
    attribution_grids: Optional[list[str]] = None  # attribution-patching grids; None: the exact grids
    rank_by: str = "all"  # rank components by the largest of |denoising|, |noising| and |single ablation| effects (or one, or both patching)
    rank_with: str = "exact"  # exact | attribution: which head/MLP patching effects rank the components
    selection: str = "faithfulness"  # faithfulness | threshold | top_k
    target_faithfulness: float = 0.8  # the smallest top-k circuit whose selection-half interval lies above this is selected
    threshold: float = 0.1  # |effect| cut for selection=threshold
    top_k: int = 8  # circuit size for selection=top_k
    ablation: str = "mean"  # mean (template-aligned, over the corrupted prompts) | zero | resample: how components outside the circuit are removed
    ablate_mlps: bool = False  # heads-only circuits as Wang et al. (MLPs and embeddings kept); true: MLPs join the pool
    reference_prompts: int = 64  # corrupted prompts of further examples that join the batch's in the ablation means
    random_circuits: int = 20  # random same-size circuits scored on the held-out half (the baseline)
    completeness_heads: int = 8  # completeness/minimality knockouts for this many top circuit heads (2 runs each)
    curve_points: int = 0  # faithfulness curve at every k (0) or at about this many k, spaced geometrically
    refine_steps: int = 4  # selection=faithfulness: bisect this many more sizes between the last below the target and the first above
    single_ablations: bool = True  # ablate every head and every MLP alone (one patched run each)
    path_senders: int = 1  # path patching from this many top-ranked heads
    sender_positions: str = "all"  # all | answer: positions of the sender's write (Merullo et al. use the last)
    neuron_ablation: int = 32  # ablate this many neurons of the top-ranked MLP (picked by attribution), one at a time
    figure_heads: int = 4  # attention-pattern panels for the top heads
    copy_heads: int = 20  # IOI: OV copy scores of the heads with the largest |direct effect| (one vocabulary projection each)
    name_movers: int = 3  # IOI: name-mover receivers of the S-inhibition path patching
    inhibition_senders: int = 12  # IOI: candidate S-inhibition heads, one path-patched run each
    inhibition_prompts: int = 16  # IOI: the first this many selection-half prompts run the S-inhibition path patching
    overlap: list[str] = field(default_factory=list)  # tasks whose solved pairs are compared (reuse); empty: every task run
    min_logit_gap: float = 0.5  # solved: the 95 % interval of the clean-corrupted logit-difference gap lies above this
    memory_mb: float = 512.0  # activation memory per batched forward; sets the chunk size
    progress: bool = False  # per-chunk progress bars
    edge_tasks: list[str] = field(default_factory=lambda: ["ioi"])  # solved tasks that also get edge circuits (docs/edges.md); []: none
    edge_methods: list[str] = field(default_factory=lambda: ["eap-ig-inputs", "eap"])  # edge scores, each a curve (also: eap-ig-activations)
    edge_budgets: list[float] = field(default_factory=lambda: list(EDGE_BUDGETS))  # circuit sizes as fractions of all edges (MIB's)
    edge_ig_steps: int = 5  # EAP-IG interpolation steps (one forward + backward of the scoring prompts each)
    edge_prompts: int = 8  # the first 8 selection prompts score the edges, the first 8 held-out prompts evaluate the circuits
    edge_random_seeds: int = 3  # random edge circuits of every size, this many draws (the floor and its range)
    edge_exact_max_edges: int = 500  # patch every edge alone (rank correlation with the scores) when the graph has at most this many

    def __post_init__(self) -> None:
        unknown = [t for t in [*self.tasks, *self.overlap] if t not in CIRCUIT_TASKS]
        if unknown:
            raise ValueError(f"circuits.tasks / circuits.overlap name unknown tasks {unknown}: use {list(CIRCUIT_TASKS)}")
        bad = [g for g in [*self.grids, *(self.attribution_grids or []), *(g for gs in self.task_grids.values() for g in gs)]
               if g not in GRIDS]
        if bad:
            raise ValueError(f"circuits.grids / attribution_grids / task_grids have unknown entries {bad}: use {sorted(GRIDS)}")
        checks = {"rank_by": (self.rank_by, RANK_BY), "rank_with": (self.rank_with, RANK_WITH), "selection": (self.selection, SELECTIONS),
                  "ablation": (self.ablation, ABLATIONS), "on_mismatch": (self.on_mismatch, ("error", "skip")),
                  "sender_positions": (self.sender_positions, SENDER_POSITIONS)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"circuits.{key}={value!r} is not one of {allowed}")
        if self.n_prompts < 1:
            raise ValueError(f"circuits.n_prompts={self.n_prompts} must be >= 1")
        self._check_task_prompts()
        if not 0 < self.target_faithfulness <= 2:
            raise ValueError(f"circuits.target_faithfulness={self.target_faithfulness} must be in (0, 2]")
        for key in ("reference_prompts", "random_circuits", "completeness_heads", "copy_heads", "name_movers",
                    "inhibition_senders"):
            if getattr(self, key) < 0:
                raise ValueError(f"circuits.{key}={getattr(self, key)} must be >= 0")
        if self.inhibition_prompts < 1:
            raise ValueError(f"circuits.inhibition_prompts={self.inhibition_prompts} must be >= 1")
        if self.refine_steps < 0:
            raise ValueError(f"circuits.refine_steps={self.refine_steps} must be >= 0 (0: the curve's sizes only)")
        if self.curve_points < 0:
            raise ValueError(f"circuits.curve_points={self.curve_points} must be >= 0 (0: every circuit size)")
        if self.memory_mb <= 0:
            raise ValueError(f"circuits.memory_mb={self.memory_mb} must be > 0")
        self._check_edges()

    def _check_edges(self) -> None:
        unknown = [t for t in self.edge_tasks if t not in CIRCUIT_TASKS]
        if unknown:
            raise ValueError(f"circuits.edge_tasks names unknown tasks {unknown}: use {list(CIRCUIT_TASKS)}")
        bad = [m for m in self.edge_methods if m not in EDGE_METHODS]
        if bad or len(set(self.edge_methods)) != len(self.edge_methods):
            raise ValueError(f"circuits.edge_methods={list(self.edge_methods)} must be distinct entries of {EDGE_METHODS}")
        b = [float(x) for x in self.edge_budgets]
        if not b or any(not 0 < x < 1 for x in b) or any(y <= x for x, y in zip(b, b[1:])):
            raise ValueError(f"circuits.edge_budgets={b} must be increasing fractions of all edges in (0, 1) "
                             f"(the model, 1, is added to the curve)")
        for key, low in (("edge_ig_steps", 1), ("edge_prompts", 1), ("edge_random_seeds", 0), ("edge_exact_max_edges", 0)):
            if getattr(self, key) < low:
                raise ValueError(f"circuits.{key}={getattr(self, key)} must be >= {low}")

    def _check_task_prompts(self) -> None:
        for key in ("task_prompts", "task_grids"):
            unknown = [t for t in getattr(self, key) if t not in CIRCUIT_TASKS]
            if unknown:
                raise ValueError(f"circuits.{key} names unknown tasks {unknown}: use {list(CIRCUIT_TASKS)}")
        bad = {t: n for t, n in self.task_prompts.items() if not isinstance(n, int) or n < 1}
        if bad:
            raise ValueError(f"circuits.task_prompts has prompt counts below 1 {bad}: each must be an integer >= 1")

    def prompts_for(self, task: str) -> int:
        """Prompts of ``task``: its ``task_prompts`` entry, else ``n_prompts``."""
        return int(self.task_prompts.get(task, self.n_prompts))

    def for_task(self, task: str) -> "CircuitSettings":
        """These settings as ``task`` runs them: its ``task_grids`` entry as the exact ``grids``."""
        if task not in self.task_grids:
            return self
        return replace(self, grids=list(self.task_grids[task]))
