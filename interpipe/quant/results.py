"""Results of the quantization study: one setting over calibration seeds, the whole study, headlines.

A setting (method x bits x protocol) runs once per calibration seed; its metrics are the mean over
seeds. Every end metric (and a causal LM's per-task pairwise accuracy) carries the 95 % interval over
calibration seeds and held-out examples (:mod:`~interpipe.quant.resample`), plus, for every method but
RTN, the paired difference to RTN at the same bits (``<metric>_minus_rtn``: same calibration texts and
the same draw of the examples, so the pairing removes the shared part of the spread); OS+ and its
ablations also against SmoothQuant (``<metric>_minus_smoothquant``). Other deltas and drops keep the t
interval over seeds (``interpipe.stats.seed_interval``). ``headline.csv`` is the tidy table a results
section quotes (docs/quantization.md); causal LMs add ``frontier.csv``, the survival frontier
(:mod:`~interpipe.quant.frontier`).

Both result classes are :class:`interpipe.result.Result` classes. A setting's folder
(``<out>/<model>-<method>-<bits>-<protocol>/``: ``layers.csv``, ``seeds.csv``, ``examples.csv``,
``migration.csv`` for migrations, ``info.json``, ``metrics.json`` last) also holds its migrated model; the
study's folder (the setting folders, ``outliers/``, ``headline_*.png``, ``info.json``, ``seeds.csv``,
``frontier.csv``, ``headline.csv``, ``summary.csv`` last) also holds the stage's exports, ``metrics.json``
and outlier figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from interpipe.io import read_json, save_figure, write_frame, write_json
from interpipe.quant import figures, frontier, resample
from interpipe.result import Result, writing
from interpipe.stats import is_interval_key, seed_interval, to_metrics

HEADLINE_METRICS = {  # what a results section quotes per model kind (lower is better for every one)
    "causal_lm": ["loss_delta", "task_acc_drop", "logit_diff_drop"],  # loss, not ppl: ppl explodes at low bits
    "encoder": ["cos_drop"],
    "sequence_classifier": ["acc_drop", "margin_drop"],  # margin: moves before a prediction on an easy task flips
}
EVAL_SET = {  # the held-out set a metric is on
    "ppl_delta": "corpus", "loss_delta": "corpus", "fp_ppl": "corpus", "fp_loss": "corpus",
    "task_acc_drop": "tasks", "logit_diff_drop": "tasks", "fp_task_acc": "tasks", "fp_logit_diff": "tasks",
    "cos_drop": "sentiment+corpus",
    "acc_drop": "sentiment", "margin_drop": "sentiment", "fp_acc": "sentiment", "fp_margin": "sentiment",
}
FP_METRICS = {"causal_lm": ["fp_ppl", "fp_loss", "fp_task_acc", "fp_logit_diff"], "encoder": [],
              "sequence_classifier": ["fp_acc", "fp_margin"]}


def headline(kind: str) -> str:
    """The end metric a summary reports first for each model kind."""
    return HEADLINE_METRICS[kind][0]


def _is_spread_key(key: str) -> bool:
    return key.endswith("_delta") or key.endswith("_drop")


def aggregate_seeds(per_seed: list[dict], rtn_per_seed: list[dict] | None = None,
                    baselines: dict[str, list[dict]] | None = None, examples=None, base_examples: dict | None = None
                    ) -> dict:
    """Mean over seeds of every numeric metric; the seed interval of every delta/drop and of its
    paired difference to each baseline (``rtn_per_seed`` -> ``_minus_rtn``; ``baselines`` by name).

    With the setting's per-example values (``examples``, and each baseline's in ``base_examples``: data frames
    or :class:`~interpipe.quant.resample.Examples`), every
    end metric they define gets the interval over seeds and evaluation examples instead
    (:mod:`~interpipe.quant.resample`), also with one seed, and so does its paired difference to each
    baseline; the causal LM's per-task ``pairwise_acc/<task>`` (and the FP model's) comes with it.
    """
    out: dict = {"n_seeds": len(per_seed)}
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in keys:
        values = [m[key] for m in per_seed if key in m]
        if _is_spread_key(key) and len(values) > 1:
            out.update(to_metrics(key, seed_interval(values)))
        else:  # one seed gives no interval: none is written rather than a degenerate one
            out[key] = float(np.mean(values))
    named = {**({"rtn": rtn_per_seed} if rtn_per_seed else {}), **(baselines or {})}
    for name, base_runs in named.items():
        base = {m["calib_seed"]: m for m in base_runs}
        for key in (k for k in keys if _is_spread_key(k)):
            diffs = [m[key] - base[m["calib_seed"]][key] for m in per_seed
                     if m["calib_seed"] in base and key in base[m["calib_seed"]]]  # paired: same calibration texts
            if len(diffs) > 1:
                out.update(to_metrics(f"{key}_minus_{name}", seed_interval(diffs)))
            elif diffs:
                out[f"{key}_minus_{name}"] = float(diffs[0])
    if examples is not None and len(examples.sets if isinstance(examples, resample.Examples) else examples):
        out.update(_resampled(examples, base_examples or {}))
    out.update({k: v for k, v in per_seed[0].items() if isinstance(v, str)})
    return out


_DRAWS: dict = {}  # set sizes -> the shared draws (the same for every setting of a study)


def _resampled(examples, base_examples: dict) -> dict:
    """Intervals over seeds and examples of every metric ``examples`` defines, and of the paired
    differences to the baselines (one shared draw of the examples: :func:`resample.draws`)."""
    out: dict = {}
    examples = resample.Examples.of(examples)
    base_examples = {name: resample.Examples.of(base) for name, base in base_examples.items()}
    sizes = tuple(sorted((n, next(iter(c.values())).shape[1]) for n, c in examples.sets.items()))
    idx = _DRAWS.setdefault(sizes, resample.draws(examples))
    for metric in resample.defined(examples):
        iv = resample.metric_interval(*resample.replicates(examples, metric, idx), metric)
        if iv is not None:
            out.update(to_metrics(metric, iv))
        if metric.startswith(resample.FP_PAIRWISE):
            continue
        if metric.startswith(resample.PAIRWISE):  # against the FP model on the same prompts (RTN's baseline)
            q, fp = (resample.replicates(examples, m, idx) for m in (metric, f"fp_{metric}"))
            out.update(to_metrics(f"{metric}_minus_fp", resample.metric_interval(q[0] - fp[0], q[1] - fp[1],
                                                                                 f"{metric}_minus_fp")))
        for name, base in base_examples.items():
            iv = resample.metric_interval(*resample.paired(examples, base, metric, idx), f"{metric}_minus_{name}")
            if iv is not None:
                out.update(to_metrics(f"{metric}_minus_{name}", iv))
    return out


OUTLIER_TEXT_COLUMNS = ("top_channels", "top_absmax", "top_min", "top_max")  # space-separated lists in summary.csv


def _read_table(path: Path, text: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV written by :func:`interpipe.io.write_frame` (``text`` columns kept as strings: a list of
    one channel would read back as a number); an empty frame without columns reads back empty."""
    try:
        return pd.read_csv(path, dtype={c: str for c in text})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


@dataclass
class SettingResult(Result):
    """One ``(method, bits, protocol)`` setting on one model, over its calibration seeds."""

    name: str  # <model>-<method>-w<b>a<b>-<protocol>
    method: str
    bits: str
    granularity: str  # protocol tag (paper | fine) or the grid of a custom protocol
    metrics: dict  # aggregated over seeds
    layers: pd.DataFrame  # first seed: one row per quantized linear, propagated and local MSE/SQNR
    migration: pd.DataFrame  # first seed: one row per migrated pair (empty for rtn)
    seeds: pd.DataFrame  # one row per calibration seed: every metric of that seed
    info: dict = field(default_factory=dict)
    examples: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per seed x held-out example (intervals)

    def to_frame(self) -> pd.DataFrame:
        """One row per quantized linear (``layers``) with the setting's name, method and bits."""
        return self.layers.assign(setting=self.name, method=self.method, bits=self.bits)

    def plot(self):
        """One figure: the propagated SQNR of every quantized linear of this setting."""
        return figures.layer_sqnr({self.name: self.layers}, self.info.get("weights_origin"))

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the setting's tables, ``info.json`` and ``metrics.json`` (the marker) into ``folder``."""
        with writing(folder, overwrite, marker="metrics.json") as out:
            write_frame(out / "layers.csv", self.layers)
            write_frame(out / "seeds.csv", self.seeds)
            if len(self.examples):
                write_frame(out / "examples.csv", self.examples)
            if len(self.migration):
                write_frame(out / "migration.csv", self.migration)
            write_json(out / "info.json", self.info)
            write_json(out / "metrics.json", self.metrics)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "SettingResult":
        """Read a folder written by :meth:`save` (name, method, bits and protocol come from ``info.json``)."""
        folder = Path(folder)
        info = read_json(folder / "info.json")
        migration = pd.read_csv(folder / "migration.csv") if (folder / "migration.csv").exists() else pd.DataFrame()
        examples = pd.read_csv(folder / "examples.csv") if (folder / "examples.csv").exists() else pd.DataFrame()
        return cls(info["name"], info["method"], info["bits"], info["granularity"], read_json(folder / "metrics.json"),
                   pd.read_csv(folder / "layers.csv"), migration, pd.read_csv(folder / "seeds.csv"), info, examples)


@dataclass
class QuantStudyResult(Result):
    """Every setting on one model plus the outlier analysis; ``save``/``load``/``to_frame``/``plot``."""

    model: str
    kind: str
    settings: list[SettingResult]
    outlier_summary: pd.DataFrame
    outlier_channels: pd.DataFrame
    token_summary: pd.DataFrame  # massive activations: first token / delimiters / other tokens per input
    info: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per setting: method, bits, protocol and every scalar metric (seed means and intervals)."""
        return pd.DataFrame([{"setting": s.name, "method": s.method, "bits": s.bits, "granularity": s.granularity,
                              **s.metrics} for s in self.settings])

    def headline_frame(self) -> pd.DataFrame:
        """Tidy headline rows: one per method x bits x metric, with the seed interval and the baseline."""
        origin = self.info.get("weights_origin") or "trained in full precision"
        rows = []
        by_key = {(s.method, s.bits): s for s in self.settings}
        for s in self.settings:
            for metric in HEADLINE_METRICS[self.kind]:
                if metric not in s.metrics:
                    continue
                rtn = by_key.get(("rtn", s.bits)) if s.method != "rtn" else None
                m = s.metrics
                rows.append({"model": self.model, "task": EVAL_SET[metric], "method": f"{s.method}-{s.bits}",
                             "weights_origin": origin, "quant_method": s.method, "bits": s.bits,
                             "protocol": s.granularity, "metric": metric, "value": m[metric],
                             "ci_low": m.get(f"{metric}_ci_low"), "ci_high": m.get(f"{metric}_ci_high"),
                             "n_seeds": m["n_seeds"], "baseline": "rtn" if rtn else "fp",
                             "baseline_value": rtn.metrics[metric] if rtn else 0.0,
                             "minus_baseline": m.get(f"{metric}_minus_rtn", m[metric]),
                             "minus_baseline_ci_low": m.get(f"{metric}_minus_rtn_ci_low", m.get(f"{metric}_ci_low")),
                             "minus_baseline_ci_high": m.get(f"{metric}_minus_rtn_ci_high", m.get(f"{metric}_ci_high")),
                             "minus_smoothquant": m.get(f"{metric}_minus_smoothquant"),
                             "minus_smoothquant_ci_low": m.get(f"{metric}_minus_smoothquant_ci_low"),
                             "minus_smoothquant_ci_high": m.get(f"{metric}_minus_smoothquant_ci_high")})
        rows += self._pairwise_rows(origin)
        front = self.frontier_frame()
        if len(front):
            rows += frontier.headline_rows(front, origin)
        first = self.settings[0].metrics
        for metric in FP_METRICS[self.kind]:
            if metric in first:
                rows.append({"model": self.model, "task": EVAL_SET[metric], "method": "fp", "weights_origin": origin,
                             "quant_method": "fp", "bits": "w16a16",
                             "protocol": "none", "metric": metric, "value": first[metric], "ci_low": None,
                             "ci_high": None, "n_seeds": 0, "baseline": "none", "baseline_value": None,
                             "minus_baseline": None, "minus_baseline_ci_low": None, "minus_baseline_ci_high": None})
        return pd.DataFrame(rows)

    def _pairwise_rows(self, origin: str) -> list[dict]:
        """Headline rows of the per-task pairwise accuracy (causal LMs; higher is better), one per method x
        bits x task, against RTN at the same bits (RTN: against the FP model)."""
        rows = []
        by_key = {(s.method, s.bits): s for s in self.settings}
        for s in self.settings:
            for key in (k for k in s.metrics if k.startswith(f"{resample.PAIRWISE}/") and not is_interval_key(k)
                        and "_minus_" not in k):
                task, m = key.split("/", 1)[1], s.metrics
                rtn = by_key.get(("rtn", s.bits)) if s.method != "rtn" else None
                fp = m.get(f"fp_{key}")
                rows.append({"model": self.model, "task": task, "method": f"{s.method}-{s.bits}",
                             "weights_origin": origin, "quant_method": s.method, "bits": s.bits,
                             "protocol": s.granularity, "metric": resample.PAIRWISE, "value": m[key],
                             "ci_low": m.get(f"{key}_ci_low"), "ci_high": m.get(f"{key}_ci_high"),
                             "n_seeds": m["n_seeds"], "baseline": "rtn" if rtn else "fp",
                             "baseline_value": rtn.metrics.get(key) if rtn else fp,
                             "minus_baseline": m.get(f"{key}_minus_{'rtn' if rtn else 'fp'}"),
                             "minus_baseline_ci_low": m.get(f"{key}_minus_{'rtn' if rtn else 'fp'}_ci_low"),
                             "minus_baseline_ci_high": m.get(f"{key}_minus_{'rtn' if rtn else 'fp'}_ci_high"),
                             "minus_smoothquant": m.get(f"{key}_minus_smoothquant"),
                             "minus_smoothquant_ci_low": m.get(f"{key}_minus_smoothquant_ci_low"),
                             "minus_smoothquant_ci_high": m.get(f"{key}_minus_smoothquant_ci_high")})
        return rows

    def frontier_frame(self) -> pd.DataFrame:
        """The survival frontier per method x series x task (:mod:`~interpipe.quant.frontier`; causal LMs
        whose held-out prompts carry a foil; empty otherwise)."""
        if self.kind != "causal_lm":
            return pd.DataFrame()
        return frontier.frontier_rows(self.model, self.settings)

    @property
    def metrics(self) -> dict:
        """Flat metrics for the stage's ``metrics.json``: ``<method>-<bits>-<protocol>/<metric>``."""
        flat: dict = {}
        top = self.outlier_summary.sort_values("outlier_ratio", ascending=False).iloc[0]
        flat["outliers/max_ratio"] = float(top["outlier_ratio"])
        flat["outliers/max_ratio_channel"] = int(top["top_channels"].split()[0])
        if len(self.token_summary):
            flat["outliers/first_token_ratio_max"] = float(self.token_summary["first_token_ratio"].max())
            flat["outliers/delimiter_ratio_max"] = float(self.token_summary["delimiter_ratio"].max())
        if self.info.get("weights_origin"):
            flat["weights_origin"] = str(self.info["weights_origin"])  # e.g. dequantised 4-bit weights
        for r in self.frontier_frame().itertuples(index=False):  # effective bits of each frontier there is
            if r.effective_bits == r.effective_bits:  # none where no setting solves the task (frontier.csv says so)
                flat[f"frontier/{r.method}/{r.series}/{r.task}"] = float(r.effective_bits)
        for s in self.settings:
            key = f"{s.method}-{s.bits}-{s.granularity}"
            flat.update({f"{key}/{k}": v for k, v in s.metrics.items() if not isinstance(v, str)})
        return flat

    def plot(self) -> dict:
        """A dict of figures by file stem (``save`` writes each as ``<stem>.png``)."""
        note = self.info.get("weights_origin")
        frame = self.to_frame()
        figs = {"headline_end_metrics": figures.end_metrics(frame, headline(self.kind), note),
                "layer_sqnr": figures.layer_sqnr({s.name: s.layers for s in self.settings}, note)}
        tasks = [t for t in frontier.TASKS if f"{resample.PAIRWISE}/{t}" in frame]
        drawn = figures.frontier(frame, tasks, frontier.CHANCE, note) if self.kind == "causal_lm" and tasks else None
        if drawn is not None:
            figs["headline_frontier"] = drawn
        return figs

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write every setting's folder, the outlier tables, figures and study tables (``summary.csv`` last)."""
        with writing(folder, overwrite, marker="summary.csv") as out:
            for s in self.settings:
                s.save(out / s.name, overwrite=overwrite)
            write_frame(out / "outliers" / "summary.csv", self.outlier_summary)
            write_frame(out / "outliers" / "channels.parquet", self.outlier_channels)
            write_frame(out / "outliers" / "tokens.csv", self.token_summary)
            for name, fig in self.plot().items():
                save_figure(fig, out / f"{name}.png")
            write_json(out / "info.json", self.info)
            write_frame(out / "seeds.csv", pd.concat([s.seeds.assign(setting=s.name) for s in self.settings],
                                                     ignore_index=True))
            front = self.frontier_frame()
            if len(front):
                write_frame(out / "frontier.csv", front)
            write_frame(out / "headline.csv", self.headline_frame())
            write_frame(out / "summary.csv", self.to_frame())
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "QuantStudyResult":
        """Read a folder written by :meth:`save`; the model's name and kind come from ``info.json``
        (``info["model"]`` is the run record's model origin, or the model's name without a record)."""
        folder = Path(folder)
        info = read_json(folder / "info.json")
        model = info["model"]["name"] if isinstance(info["model"], dict) else info["model"]
        settings = [SettingResult.load(folder / name) for name in pd.read_csv(folder / "summary.csv")["setting"]]
        outliers = folder / "outliers"
        return cls(model, info["kind"], settings, _read_table(outliers / "summary.csv", OUTLIER_TEXT_COLUMNS),
                   pd.read_parquet(outliers / "channels.parquet"), _read_table(outliers / "tokens.csv"), info)
