"""The committed results snapshot: the few tables every number quoted in the docs comes from.

    python -m interpipe.report.snapshot outputs results     # make run does this after dvc repro

``results/`` holds, from the run whose ``dvc.lock`` is committed beside it:

- ``findings.csv`` — the report's findings (:mod:`interpipe.report.findings`);
- ``headline.csv`` — every study's headline rows (``study, stage, model, task, method, metric, value,
  ci_low, ci_high, baseline, baseline_value``, plus ``setting``, ``bits``, ``quant_method`` and the paired
  difference to the baseline with its interval where the study has them);
- ``timings.csv`` — wall and CPU seconds and peak memory of every stage execution;
- ``evaluate.csv`` — each model's task metrics from the evaluate stage (``model, task, metric, value``).

Numbers are kept to 6 significant digits, so a rerun within the reproducibility tolerance rewrites
only the digits that moved. The blocks of README.md and docs/ are rendered from these files by
:mod:`interpipe.report.quote`; nothing quoted is typed by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interpipe.io import read_json, write_frame
from interpipe.report.findings import FILE as FINDINGS_FILE
from interpipe.report.timings import stage_timings

FINDINGS, HEADLINE, TIMINGS, EVALUATE = "findings.csv", "headline.csv", "timings.csv", "evaluate.csv"
HEADLINE_COLUMNS = ["study", "stage", "model", "task", "method", "metric", "value", "ci_low", "ci_high",
                    "baseline", "baseline_value", "setting", "quant_method", "bits",
                    # a difference to the baseline with its own interval (quantize: minus_baseline; attribution: diff)
                    "minus_baseline", "minus_baseline_ci_low", "minus_baseline_ci_high", "diff", "diff_ci_low", "diff_ci_high"]
DIGITS = 6


def _rounded(frame: Any) -> Any:
    """Floats to ``DIGITS`` significant digits (strings and integers as they are)."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(lambda x: float(f"{x:.{DIGITS}g}") if x == x else x)
    return frame


def snapshot_frames(outputs: str | Path) -> dict[str, Any]:
    """The snapshot tables from a pipeline's ``outputs`` folder (its ``report/`` must exist)."""
    import pandas as pd

    outputs = Path(outputs)
    report = outputs / "report"
    findings_csv = report / FINDINGS_FILE
    if not findings_csv.exists():
        raise FileNotFoundError(f"{findings_csv} does not exist: run the aggregate stage first "
                                "(`dvc repro aggregate`, or `make run`)")
    findings = pd.read_csv(findings_csv, keep_default_na=False)
    parts = []
    for path in sorted((report / "headline").glob("*.csv")):
        frame = pd.read_csv(path, low_memory=False)
        frame.insert(0, "study", path.stem)
        parts.append(frame.reindex(columns=HEADLINE_COLUMNS))
    headline = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=HEADLINE_COLUMNS)
    timings = pd.DataFrame(stage_timings(outputs))
    timings = timings[~timings["folder"].str.startswith("report")] if len(timings) else timings
    return {FINDINGS: _rounded(findings), HEADLINE: _rounded(headline), TIMINGS: _rounded(timings),
            EVALUATE: _rounded(evaluate_frame(outputs / "evaluate"))}


def evaluate_frame(folder: Path) -> Any:
    """``model, task, metric, value`` from every ``<model>/metrics.json`` under the evaluate stage's folder."""
    import pandas as pd

    rows = []
    for path in sorted(folder.glob("*/metrics.json")):
        for key, value in read_json(path).items():
            if "/" in key and isinstance(value, (int, float)):
                task, metric = key.split("/", 1)
                rows.append({"model": path.parent.name, "task": task, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value"])


def write_snapshot(outputs: str | Path, snapshot: str | Path) -> list[Path]:
    """Write the snapshot tables of ``outputs`` into ``snapshot``; return the files written."""
    snapshot = Path(snapshot)
    written = []
    for name, frame in snapshot_frames(outputs).items():
        written.append(write_frame(snapshot / name, frame))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the committed results snapshot from a pipeline's outputs.")
    parser.add_argument("outputs", nargs="?", default="outputs", help="the pipeline's outputs folder")
    parser.add_argument("snapshot", nargs="?", default="results", help="the snapshot folder (committed)")
    args = parser.parse_args(argv)
    for path in write_snapshot(args.outputs, args.snapshot):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
