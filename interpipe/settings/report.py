"""Settings of the report: where outputs are found and how results are compared."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from interpipe.data.prepare import ALL_TASKS

# Which study a stage's outputs belong to (stage name -> study). Unknown stages become their own study.
DEFAULT_STUDIES = {
    "prepare": "foundation", "model": "foundation", "evaluate": "foundation",
    "attribute": "attribution",
    "circuits": "circuits",
    "talking_heads": "weights", "bigram": "weights", "lnfree": "weights", "weights": "weights",
    "quantize": "quantization",
    "quant_interp": "quant_interp",  # interpretability under quantization: FP vs quantized circuits and attributions
    "aggregate": "report",
}
# Output folders whose name differs from the stage that writes them.
DEFAULT_STAGE_DIRS = {"data": "prepare", "models": "model"}
# Metric names (regular expressions, searched case-insensitively) where smaller is better.
DEFAULT_LOWER_IS_BETTER = [
    "loss", "error", "err$", "seconds", "time", "latency", "perplexity", "ppl", "mse", "mae", "kl",
    "sufficiency", "drop", "degradation", "rank$", "bytes", "memory", "foil", "abs_diff", "rel_diff",
    "circuit_size", "circuit_heads",
]
# Metric names where larger is better (they beat the "lower" patterns above). A metric that matches
# neither list has no declared direction and is shown without a "best" mark.
DEFAULT_HIGHER_IS_BETTER = [
    "accuracy", "acc$", "faithful", "comprehensiveness", "sqnr", "cosine", "corr", "logit_diff", "logit_gap",
    "agreement", "auc", "winrate", "win_rate", "f1", "retained", "excess", "gain", "spearman", "kendall",
    "jaccard", "overlap", "per_second",
]
# Shown but never marked "best": costs (a method's speed is not its quality) and interval bounds.
DEFAULT_NOT_RANKED = ["seconds", "time", "latency", "memory", "bytes", "per_second", "_ci_low$", "_ci_high$",
                      "_baseline$", "steps"]
# Methods that are baselines: their rows are compared against, never marked "best".
DEFAULT_BASELINE_METHODS = ["random", "random_circuit", "unedited", "fp"]
# Metrics that describe a run rather than grade it (counts, bit widths, seeds): kept in the results,
# never ranked or plotted.
DEFAULT_NOT_COMPARED = ["^stage_seconds$", "^n_", "_bits$", "^seed$", "^skipped"]
# The metric each study's `dvc plots` bar chart shows (when the study reports it).
DEFAULT_HEADLINE = {
    "attribution": "comprehensiveness", "circuits": "faithfulness", "quantization": "sqnr_mean_db",
    "foundation": "accuracy", "quant_interp": "clean_logit_diff_retained",
}
# Figure names that are shown first (the key figures of each study).
DEFAULT_KEY_FIGURES = [
    "heatmap", "faithful", "curve", "circuit", "composition", "accuracy", "length", "outlier", "sqnr",
    "patch", "mask", "surprisal",
]


@dataclass
class ReportSettings:
    """What the ``aggregate`` stage reads and how it lays out the report."""

    roots: list[str] = field(default_factory=lambda: ["outputs", "multirun"])  # stage outputs and Hydra sweeps
    exclude: list[str] = field(default_factory=lambda: ["outputs/report"])  # never aggregate the report itself
    models_dir: str = "outputs/models"  # model cards (card.json) shown in the page header
    studies: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STUDIES))  # stage -> study
    stage_dirs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STAGE_DIRS))  # folder -> stage
    model_free: list[str] = field(default_factory=lambda: ["prepare", "aggregate", "quant_interp"])  # stages of no one model
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))  # recognised in paths and metric prefixes
    lower_is_better: list[str] = field(default_factory=lambda: list(DEFAULT_LOWER_IS_BETTER))  # else higher wins
    higher_is_better: list[str] = field(default_factory=lambda: list(DEFAULT_HIGHER_IS_BETTER))  # beats the above
    ignored_overrides: list[str] = field(default_factory=lambda: ["logger", "paths", "hydra", "device"])  # not a setting
    not_compared: list[str] = field(default_factory=lambda: list(DEFAULT_NOT_COMPARED))  # kept, never ranked
    not_ranked: list[str] = field(default_factory=lambda: list(DEFAULT_NOT_RANKED))  # compared, never "best"
    baseline_methods: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINE_METHODS))  # never "best"
    headline: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_HEADLINE))  # else the most reported metric
    key_figures: list[str] = field(default_factory=lambda: list(DEFAULT_KEY_FIGURES))  # shown first
    key_tables: list[str] = field(default_factory=lambda: ["operators.csv", "winrate.csv", "reuse.csv", "ioi_heads.csv",
                                                            "pairs.csv", "head_classes.csv"])  # shown under a study's headline
    max_figures_per_study: int = 24  # keeps the page light; the rest stay in the output folders
    figure_width_px: int = 900  # wider figures are downscaled before they are inlined
    thumbnail_width_px: int = 220  # figures outside the headline are inlined at this width, linked to full size
    title: str = "interpipe report"

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("report.roots must name at least one folder (e.g. [outputs, multirun])")
        if self.max_figures_per_study < 0:
            raise ValueError(f"report.max_figures_per_study={self.max_figures_per_study} must be >= 0")
        if not 64 <= self.figure_width_px <= 4096:
            raise ValueError(f"report.figure_width_px={self.figure_width_px} must be in [64, 4096]")
        if not 32 <= self.thumbnail_width_px <= self.figure_width_px:
            raise ValueError(f"report.thumbnail_width_px={self.thumbnail_width_px} must be in "
                             f"[32, figure_width_px={self.figure_width_px}]")

    def compared(self, metric: str) -> bool:
        """False for metrics that describe a run (``n_examples``, ``w_bits``) rather than grade it."""
        return not any(re.search(p, metric, flags=re.IGNORECASE) for p in self.not_compared)

    def direction(self, metric: str) -> str | None:
        """``"lower"`` or ``"higher"`` when one is better, ``None`` when the metric is not ranked.

        >>> [ReportSettings().direction(m) for m in ["ce_loss", "ioi/accuracy", "seconds", "faithfulness_ci_low", "n_heads_kept"]]
        ['lower', 'higher', None, None, None]
        """
        def matches(patterns: list[str]) -> bool:
            return any(re.search(p, metric, flags=re.IGNORECASE) for p in patterns)

        if matches(self.not_ranked):
            return None
        if matches(self.higher_is_better):
            return "higher"
        return "lower" if matches(self.lower_is_better) else None

    def study_of(self, stage: str) -> str:
        """The study a stage belongs to (the stage's own name when unknown)."""
        return self.studies.get(stage, stage)
