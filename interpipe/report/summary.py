"""Print where the report is and a short summary table in the terminal.

    python -m interpipe.report.summary outputs/report

The findings first (one line per study and model: the headline number with its interval, the floor or
baseline, the verdict and why; the same list opens the report page), then one line per study: runs,
models, methods and values in the results table. Nothing is truncated.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interpipe.report.findings import FILE as FINDINGS_FILE


def summary_rows(results) -> list[list[str]]:
    """``[study, runs, models, methods, values]`` per study."""
    rows = []
    for study, part in results.groupby("study", sort=True):
        rows.append([str(study), str(part["run_dir"].nunique()), str(part["model"].replace("", None).nunique()),
                     str(part["method"].replace("", None).nunique()), str(len(part))])
    return rows


VERDICT_STYLE = {"shows the effect": "green", "valid negative": "yellow", "uninformative": "dim"}


def print_findings(findings: Any, console: Any) -> None:
    """The findings (``findings.csv``), one short paragraph each: lines wrap at any width, nothing is cut."""
    from rich.markup import escape

    console.print(f"[bold]Findings[/bold] ({len(findings)}; one per study and model, 95 % intervals)")
    for row in findings.itertuples(index=False):
        style = VERDICT_STYLE.get(row.verdict, "")
        verdict = f"[{style}]{row.verdict}[/{style}]" if style else escape(row.verdict)
        console.print(f"[bold]{escape(row.stage)}[/bold] · {escape(row.model)} — {verdict}")
        console.print(f"    {escape(row.claim)}: [bold]{escape(row.value_text)}[/bold]; "
                      f"floor/baseline {escape(row.baseline_text)}")
        if row.reason:
            console.print(f"    {escape(row.reason)}")


def print_summary(report_dir: str | Path = "outputs/report", console=None) -> int:
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
    findings_csv = report_dir / FINDINGS_FILE
    if findings_csv.exists():
        print_findings(pd.read_csv(findings_csv, keep_default_na=False), console)
    table = Table(title=f"interpipe results ({results['run_dir'].nunique()} runs, {len(results)} values)")
    for column in ("study", "runs", "models", "methods", "values"):
        table.add_column(column, justify="left" if column == "study" else "right", no_wrap=True)
    for row in summary_rows(results):
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
