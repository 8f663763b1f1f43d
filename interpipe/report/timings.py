"""Print the seconds of every stage execution of a pipeline run (from each folder's ``run.json``).

    python -m interpipe.report.timings outputs

One row per execution: its folder, wall seconds of the whole process (imports and model loads
included), CPU seconds and peak memory; the total at the bottom is what ``dvc repro`` waited for
when every stage ran.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def stage_timings(root: str | Path) -> list[dict]:
    """Every ``run.json`` under ``root`` as ``{folder, stage, model, wall_seconds, cpu_seconds, peak_memory_mb}``."""
    rows = []
    root = Path(root)
    for path in sorted(root.rglob("run.json")):
        record = json.loads(path.read_text())
        rows.append({"folder": str(path.parent.relative_to(root)), "stage": record.get("stage", ""),
                     "model": (record.get("model") or {}).get("name", ""),
                     "wall_seconds": float(record.get("wall_seconds", 0.0)),
                     "cpu_seconds": float(record.get("cpu_seconds", 0.0)),
                     "peak_memory_mb": float(record.get("peak_memory_mb", 0.0))})
    return rows


def print_timings(root: str | Path = "outputs", console=None) -> int:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = stage_timings(root)
    if not rows:
        console.print(f"no run.json under {root}: no stage has run")
        return 1
    table = Table(title=f"stage executions under {root}")
    for column in ("folder", "stage", "wall s", "CPU s", "peak MiB"):
        table.add_column(column, justify="left" if column in ("folder", "stage") else "right")
    for row in rows:
        table.add_row(row["folder"], row["stage"], f"{row['wall_seconds']:.1f}", f"{row['cpu_seconds']:.1f}",
                      f"{row['peak_memory_mb']:.0f}")
    total = sum(r["wall_seconds"] for r in rows)
    table.add_row("total", "", f"{total:.1f}", f"{sum(r['cpu_seconds'] for r in rows):.1f}", "")
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seconds of every stage execution under a folder.")
    parser.add_argument("root", nargs="?", default="outputs", help="the pipeline's outputs folder")
    return print_timings(parser.parse_args(argv).root)


if __name__ == "__main__":
    raise SystemExit(main())
