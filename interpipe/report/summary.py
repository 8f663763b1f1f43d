"""Print where the report is and a short summary table in the terminal.

    python -m interpipe.report.summary outputs/report

One line per study: rows, runs, models, methods, and the best value of its headline metric.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interpipe.report.compare import headline_metric, lower_is_better
from interpipe.settings.report import ReportSettings


def summary_rows(results, settings: ReportSettings) -> list[list[str]]:
    """``[study, runs, models, methods, headline metric, best value (where)]`` per study."""
    rows = []
    for study, part in results.groupby("study", sort=True):
        metric = headline_metric(results, str(study), settings)
        best, where = "", ""
        values = part[part["metric"] == metric]
        if len(values):
            low = lower_is_better(metric, settings)
            row = values.loc[values["value"].idxmin() if low else values["value"].idxmax()]
            best = f"{row['value']:.4g}"
            where = "/".join(str(row[k]) for k in ("model", "task", "method", "setting") if str(row[k]))
        rows.append([str(study), str(part["run_dir"].nunique()), str(part["model"].replace("", None).nunique()),
                     str(part["method"].replace("", None).nunique()), metric, best, where])
    return rows


def print_summary(report_dir: str | Path = "outputs/report", settings: ReportSettings | None = None,
                  console=None) -> int:
    """Print the page's location and the per-study summary; return 1 when no report exists."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    report_dir = Path(report_dir)
    parquet = report_dir / "results.parquet"
    if not parquet.exists():
        console.print(f"[red]no report in {report_dir}[/red]: run `dvc repro aggregate`")
        return 1
    results = pd.read_parquet(parquet)
    table = Table(title=f"interpipe results ({results['run_dir'].nunique()} runs, {len(results)} values)")
    for column in ("study", "runs", "models", "methods", "headline metric", "best", "where"):
        table.add_column(column, justify="right" if column in ("runs", "models", "methods", "best") else "left")
    for row in summary_rows(results, settings or ReportSettings()):
        table.add_row(*row)
    console.print(table)
    page = (report_dir / "index.html").resolve()
    console.print(f"Report: [bold]{page}[/bold]  (open file://{page})")
    console.print(f"Tables: {(report_dir / 'results.csv')} and {report_dir / 'tables'}/<study>.csv")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise the aggregated results in the terminal.")
    parser.add_argument("report_dir", nargs="?", default="outputs/report", help="the aggregate stage's output folder")
    return print_summary(parser.parse_args(argv).report_dir)


if __name__ == "__main__":
    raise SystemExit(main())
