"""The interpretability-under-quantization study as one call: does the FP model's mechanism survive quantization?

For every (FP model, quantized model) pair, :func:`run_quant_interp` reads both models' circuits and
attribute results, loads each model once into a ``TransformerBridge`` and measures, on the FP
circuits run's own held-out prompts (:mod:`.transfer`): whether the quantized model still solves the
task (the one rule of :mod:`.verdict`: its pairwise accuracy's interval above chance), the clean logit
difference it retains and, in a solved pair, the FP circuit's held-out faithfulness inside it beside
same-size random circuits; from the saved results (:mod:`.compare`, :mod:`.drift`): the overlap of
the circuit rediscovered in the quantized model with the FP one, the correlation of the per-head
patching effects, whether each named IOI head keeps its class, and each attribution method's drift.
Every number from prompts or examples has a bootstrap interval; a number an unsolved pair (or a
missing circuit, or a class of too few heads) leaves without meaning is NaN with its reason
(``PairResult.undefined``), never 0.0 or a ratio. It writes ``headline.csv`` (the shared contract of
:mod:`interpipe.headline`, with ``verdict`` and ``reason`` columns), ``pairs.csv``, ``head_effects.csv``,
``head_classes.csv``, ``attribution_drift.csv``, ``drift_per_example.csv`` and ``headline_*.png`` into
``out_dir`` and returns the flat metrics. Inputs are checked before any model loads
(:func:`interpipe.quant_interp.inputs.check_inputs`).

Each pair's measurements are a :class:`PairResult` (an :class:`interpipe.result.Result`). The study
writes all pairs together into the tables above (:mod:`.tables`, :mod:`.figures`); ``PairResult.save``
writes one pair into a folder of its own (``pair.json``, ``effects.parquet``, ``classes.parquet``,
``drift_examples/<i>.parquet``) for reading one comparison back, and is not part of the stage's outputs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from interpipe.quant_interp import basis, compare, drift, transfer, verdict
from interpipe.quant_interp.inputs import (CircuitRun, Pair, Roots, attribution_methods, check_inputs, circuit_settings,
                                           pairs_of, read_circuit_run)
from interpipe.result import Result, writing
from interpipe.settings.circuits import CircuitSettings
from interpipe.settings.quant_interp import QuantInterpSettings
from interpipe.stats import Interval, bootstrap

SCORED = ("faithfulness", "faithfulness_per_prompt", "random_faithfulness", "excess_over_random", "circuit_accuracy")
OVERLAP = ("circuit_jaccard", "circuit_containment", "circuit_shared_heads")  # compare.overlap's keys


@dataclass
class PairResult(Result):
    """Everything measured on one (FP, quantized) pair."""

    pair: Pair
    intervals: dict[str, Interval]  # model- and circuit-level numbers with their intervals
    numbers: dict[str, float]  # numbers without a sampling interval (overlap of two sets, sizes, FP values)
    effects: Any  # DataFrame: per-head z_head effects, layer, head, effect_fp, effect_quantized
    classes: Any  # DataFrame: compare.head_class_table
    survival: dict[str, Interval]  # per FP head class: share of its heads that keep the class
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> drift.method_drift summary
    drift_examples: list[Any] = field(default_factory=list)  # per-method per-example DataFrames
    info: dict[str, Any] = field(default_factory=dict)  # the pair's identity: FP and quantized model, task, effect method
    undefined: dict[str, str] = field(default_factory=dict)  # headline metric -> why it is NaN (verdict.py), never 0.0

    @property
    def verdict(self) -> str:
        """``"solved"`` or ``"unsolved"`` by the study's one rule (:func:`interpipe.quant_interp.verdict.solves`)."""
        return verdict.SOLVED if self.numbers.get("quantized_solved") else verdict.UNSOLVED

    def to_frame(self) -> Any:
        """The pair's row of ``pairs.csv``: every number with its interval."""
        from interpipe.quant_interp.tables import pair_frame

        return pair_frame([self])

    def plot(self) -> dict[str, Any]:
        """A dict of figures by file stem: the study's ``headline_*`` figures drawn for this pair alone."""
        from interpipe.quant_interp import figures

        out = {"headline_solved_and_transfer": figures.solved_and_transfer([self])}
        drift_figure = figures.attribution_drift([self])
        if drift_figure is not None:
            out["headline_attribution_drift"] = drift_figure
        return out

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the pair into its own folder (the result owns it: written whole, then renamed)."""
        from interpipe.io import write_frame, write_json

        with writing(folder, overwrite) as tmp:
            write_frame(tmp / "effects.parquet", self.effects)
            write_frame(tmp / "classes.parquet", self.classes)
            for i, frame in enumerate(self.drift_examples):
                write_frame(tmp / "drift_examples" / f"{i}.parquet", frame)
            write_json(tmp / "pair.json", {
                "pair": asdict(self.pair), "intervals": _encoded(self.intervals), "numbers": self.numbers,
                "survival": _encoded(self.survival), "drift": {m: _encoded(d) for m, d in self.drift.items()},
                "drift_examples": len(self.drift_examples), "info": self.info, "undefined": self.undefined},
                allow_nonfinite=True)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "PairResult":
        """Read a folder written by :meth:`save`."""
        import pandas as pd

        from interpipe.io import read_json

        folder = Path(folder)
        meta = read_json(folder / "pair.json")
        return cls(Pair(**meta["pair"]), _decoded(meta["intervals"]), meta["numbers"],
                   pd.read_parquet(folder / "effects.parquet"), pd.read_parquet(folder / "classes.parquet"),
                   _decoded(meta["survival"]), {m: _decoded(d) for m, d in meta["drift"].items()},
                   [pd.read_parquet(folder / "drift_examples" / f"{i}.parquet") for i in range(meta["drift_examples"])],
                   meta["info"], meta.get("undefined", {}))


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    """Intervals as ``{"estimate", "low", "high", "n"}`` dicts for JSON; other values as they are."""
    return {k: asdict(v) if isinstance(v, Interval) else v for k, v in values.items()}


def _decoded(values: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`_encoded`."""
    return {k: Interval(**v) if isinstance(v, dict) else v for k, v in values.items()}


def _interval(metrics: dict[str, float], key: str, n: int) -> Interval:
    return Interval(metrics[key], metrics.get(key + "_ci_low", metrics[key]), metrics.get(key + "_ci_high", metrics[key]), n)


def _transfer(scorer: Any, fp_ld: Any, fp_run: CircuitRun, settings: QuantInterpSettings
              ) -> tuple[dict[str, Interval], dict[str, str], bool]:
    """The quantized model on the FP run's held-out prompts: the solved rule (:mod:`.verdict`), the logit
    difference it keeps and, in a solved pair only, the FP circuit scored inside it. Returns (intervals,
    undefined numbers with their reasons, solved)."""
    n = settings.bootstrap_resamples
    accuracy = verdict.pairwise_accuracy(scorer.clean_ld, n)  # (heldout,) logit differences -> share above 0
    intervals = {"quantized_pairwise_accuracy": accuracy,
                 "quantized_clean_logit_diff": bootstrap(scorer.clean_ld, n_resamples=n),
                 "fp_clean_logit_diff": bootstrap(fp_ld, n_resamples=n),
                 "clean_logit_diff_retained": transfer.retained_logit_diff(fp_ld, scorer.clean_ld, n)}
    if not verdict.solves(accuracy, settings.min_pairwise_accuracy):
        reason = verdict.unsolved_reason(accuracy, settings.min_pairwise_accuracy)
        return intervals, {f"fp_circuit_{k}": reason for k in SCORED}, False
    scored = transfer.score_fp_circuit(scorer, fp_run.components, settings.random_circuits)
    n_heldout = int(scored["heldout_prompts"])
    intervals.update({f"fp_circuit_{k}": _interval(scored, k, n_heldout) for k in SCORED if k in scored})
    return intervals, {}, True


def _mechanism(fp_run: CircuitRun, q_run: CircuitRun, settings: QuantInterpSettings, unsolved: str
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """Overlap, effect correlation and head-class survival of one pair, and the reasons of those undefined
    (``unsolved``: the unsolved pair's reason, "" in a solved pair; :mod:`.verdict`)."""
    numbers = {"fp_faithfulness": fp_run.metrics.get("faithfulness", float("nan")),
               "fp_circuit_heads": float(len(fp_run.heads)), **compare.overlap(fp_run.heads, q_run.heads),
               "quantized_circuit_heads": float(len(q_run.heads)),
               "quantized_circuits_solved": float(q_run.metrics.get("solved", 0))}
    no_circuit = unsolved or verdict.no_circuit_reason(len(q_run.components), q_run.metrics.get("pool_size", 0.0),
                                                       bool(q_run.metrics.get("solved", 0)))
    undefined = {k: no_circuit for k in (*OVERLAP, "quantized_circuit_heads")} if no_circuit else {}
    if not no_circuit:  # one row per head in ioi_heads.csv: the heads a random set is drawn from
        numbers.update(compare.overlap_chance(fp_run.heads, q_run.heads, len(fp_run.head_classes)))
    numbers.update({k: float("nan") for k in undefined})
    paired = compare.paired_effects(fp_run.effects, q_run.effects)
    correlation = verdict.undefined_interval() if unsolved else compare.effect_correlation(paired,
                                                                                          settings.bootstrap_resamples)
    if unsolved or correlation.n == 0:
        correlation = verdict.undefined_interval()
        undefined["effect_correlation"] = unsolved or ("no patching: the quantized model's circuits run found the "
                                                       "task unsolved by its own test")
    classes = compare.head_class_table(fp_run.head_classes, q_run.head_classes, paired, fp_run.heads, q_run.heads)
    survival, why = compare.class_survival(classes, settings.bootstrap_resamples, settings.min_class_heads)
    if unsolved:
        survival, why = {k: verdict.undefined_interval() for k in survival}, {k: unsolved for k in survival}
    undefined.update({f"{k}_survival": reason for k, reason in why.items()})
    return {"numbers": numbers, "paired": paired, "correlation": correlation, "classes": classes,
            "survival": survival}, undefined


def compare_pair(pair: Pair, fp_run: CircuitRun, fp_model: Any, circuits: CircuitSettings,
                 roots: Roots, settings: QuantInterpSettings, device: str, dtype: str) -> PairResult:
    """Load the quantized model, decide whether it solves the task, score the FP circuit in it (solved
    pairs only) and compare both models' saved results."""
    from interpipe.circuits.bridge import load_bridge

    q_run = read_circuit_run(roots, pair.quantized, settings.task, settings.effect_method)
    bridge = load_bridge(roots.models / pair.quantized, device=device, dtype=dtype)
    batch = transfer.circuit_batch(bridge, circuits, roots.data, settings.task)
    transfer.check_same_tokenizer(roots.models / pair.fp, roots.models / pair.quantized, batch.prompts)
    fp_ld = transfer.heldout_clean_ld(fp_model, batch)  # (heldout,) the same prompts in the FP model
    scorer = transfer.heldout_scorer(bridge, batch, circuits, settings.memory_mb)
    intervals, undefined, solved = _transfer(scorer, fp_ld, fp_run, settings)
    del bridge, scorer
    unsolved = "" if solved else undefined["fp_circuit_faithfulness"]
    parts, more = _mechanism(fp_run, q_run, settings, unsolved)
    intervals["effect_correlation"] = parts["correlation"]
    numbers = {**parts["numbers"], "quantized_solved": float(solved),
               "min_pairwise_accuracy": settings.min_pairwise_accuracy}
    result = PairResult(pair, intervals, numbers, parts["paired"], parts["classes"], parts["survival"],
                        info={"fp_model": pair.fp, "model": pair.quantized, "task": settings.task,
                              "effect_method": settings.effect_method, "basis": basis.note(pair.setting[0])},
                        undefined={**undefined, **more})
    if settings.attribution and pair.attribution:
        _add_drift(result, pair, roots, settings)
    return result


def _add_drift(result: PairResult, pair: Pair, roots: Roots, settings: QuantInterpSettings) -> None:
    """Each attribution method's drift; in a rotated pair, a method whose scores depend on the residual basis
    is left out with its reason (:mod:`.basis`)."""
    rotated = basis.rotated(pair.setting[0])
    for method in attribution_methods(roots, pair.fp, pair.quantized):
        reductions = sorted({basis.gradient_reduction(roots.attribute / m / method) for m in (pair.fp, pair.quantized)})
        why = next((r for r in (basis.attribution_reason(method, x) for x in reductions) if r), "") if rotated else ""
        if why:
            result.undefined[f"{method}/token_rank_correlation"] = why
            continue
        summary, per_example = drift.method_drift(roots.attribute / pair.fp / method,
                                                  roots.attribute / pair.quantized / method,
                                                  settings.bootstrap_resamples)
        result.drift[method] = summary
        result.drift_examples.append(per_example.assign(fp_model=pair.fp, model=pair.quantized, method=method))


def compare_fp_model(fp: str, pairs: list[Pair], roots: Roots, settings: QuantInterpSettings, device: str,
                     dtype: str) -> list[PairResult]:
    """Every pair of one FP model: the FP model loads once (no bridge) for its held-out clean logit differences."""
    fp_run = read_circuit_run(roots, fp, settings.task, settings.effect_method)
    circuits = circuit_settings(roots, fp)
    fp_model = transfer.load_fp_model(roots.models / fp, device, dtype)
    return [compare_pair(p, fp_run, fp_model, circuits, roots, settings, device, dtype) for p in pairs]


def run_quant_interp(settings: QuantInterpSettings, out_dir: str | Path, models_root: str | Path,
                     data_root: str | Path, device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Run the study on every pair of ``settings``; returns the flat metrics of the run."""
    from interpipe.quant_interp import figures, tables
    from interpipe.runtime import resolve_device

    start = time.perf_counter()
    out_dir = Path(out_dir)
    roots = Roots(Path(models_root), Path(data_root), Path(settings.circuits_root), Path(settings.attribute_root))
    pairs = pairs_of(settings, roots.models)
    check_inputs(pairs, roots, settings.task, settings.attribution)  # before any model loads
    device = str(resolve_device(device))
    results: list[PairResult] = []
    for fp in dict.fromkeys(p.fp for p in pairs):
        results += compare_fp_model(fp, [p for p in pairs if p.fp == fp], roots, settings, device, dtype)
    tables.write_tables(results, settings.task, out_dir)
    figures.write_figures(results, out_dir)
    metrics = tables.flat_metrics(results)
    metrics["seconds"] = time.perf_counter() - start
    return metrics
