"""Quoted results in the docs: blocks rendered from the committed snapshot, never typed by hand.

A block in a Markdown file is a directive comment and its generated body::

    <!-- quote headline stage=quantize model=smollm2 metric=loss_delta -->
    | model | task | method | metric | value [95 % interval] | baseline |
    ...
    <!-- /quote -->

Kinds (filters are ``column=value`` or ``column=a,b``; every kind takes them):

- ``findings``: the findings (study, model, what is measured, result, floor/baseline, verdict, why);
- ``headline``: headline rows (``columns=`` picks the label columns; default model, task, method, metric;
  rows are grouped by the first two; ``extra=minus_baseline`` adds that column with its interval);
- ``timings``: stage executions' wall and CPU seconds, the total first (``top=N`` keeps the N longest);
- ``evaluate``: the evaluate stage's task metrics (no intervals: the study pages quote those).

    python -m interpipe.report.quote --write     # re-render every block of README.md and docs/*.md
    python -m interpipe.report.quote --check     # exit 1, naming each block that differs from the snapshot

``make run`` refreshes the snapshot and then the blocks; ``tests/report/test_quotes.py`` fails when a
committed block differs from the committed snapshot, or when an interval is quoted outside a block.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from interpipe.headline import format_number, format_value
from interpipe.report.snapshot import EVALUATE, FINDINGS, HEADLINE, TIMINGS

BLOCK = re.compile(r"(?P<open><!-- quote (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /quote -->)", re.S)
DEFAULT_FILES = ("README.md", "docs")
# An interval as the report writes one, "0.42 [0.38, 0.47]": outside a block it is a hand-typed result.
TYPED_INTERVAL = re.compile(r"-?\d*\.\d+\s*\[\s*[−-]?\d*\.?\d+,\s*[−-]?\d*\.?\d+\s*\]")


class QuoteError(ValueError):
    """A block whose directive cannot be rendered (unknown kind, unknown column, no rows)."""


@dataclass
class Block:
    path: Path
    spec: str
    body: str
    start: int
    end: int


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"headline stage=quantize metric=a,b"`` -> ``("headline", {"stage": "quantize", "metric": "a,b"})``."""
    words = shlex.split(spec)
    if not words:
        raise QuoteError("an empty quote directive: write `<!-- quote findings -->` or another kind")
    options = {}
    for word in words[1:]:
        if "=" not in word:
            raise QuoteError(f"quote option {word!r} is not key=value")
        key, value = word.split("=", 1)
        options[key] = value
    return words[0], options


def _filtered(frame: Any, options: dict[str, str], reserved: tuple[str, ...]) -> Any:
    for key, value in options.items():
        if key in reserved:
            continue
        if key not in frame:
            raise QuoteError(f"no column {key!r} to filter on; the table has {list(frame.columns)}")
        frame = frame[frame[key].astype(str).isin(value.split(","))]
    return frame


def _table(header: list[str], rows: list[list[str]]) -> str:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _number(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def render_findings(snapshot: dict[str, Any], options: dict[str, str]) -> tuple[Any, str]:
    frame = _filtered(snapshot[FINDINGS], options, ())
    header = ["study", "model", "what is measured", "result [95 % interval]", "floor / baseline", "verdict", "why"]
    rows = [[r.stage, r.model, r.claim, r.value_text, r.baseline_text, f"**{r.verdict}**", r.reason]
            for r in frame.itertuples(index=False)]
    return frame, _table(header, rows)


def render_headline(snapshot: dict[str, Any], options: dict[str, str]) -> tuple[Any, str]:
    frame = _filtered(snapshot[HEADLINE], options, ("columns", "extra"))
    labels = options.get("columns", "model,task,method,metric").split(",")
    for column in labels:
        if column not in frame:
            raise QuoteError(f"no column {column!r} in the headline snapshot")
    extras = [c for c in options.get("extra", "").split(",") if c]
    for column in extras:
        if column not in frame:
            raise QuoteError(f"no column {column!r} in the headline snapshot")
    frame = frame.sort_values(labels[:2], kind="stable")  # grouped by the first two labels, rows kept in order
    rows = []
    for r in frame.to_dict("records"):
        base = _number(r.get("baseline_value"))
        baseline = str(r.get("baseline") or "")
        baseline = baseline if baseline != "nan" else ""
        baseline_text = f"{baseline}: {format_number(base)}" if baseline and base == base else baseline or format_number(base)
        extra = [format_value(_number(r[c]), _number(r[f"{c}_ci_low"]), _number(r[f"{c}_ci_high"])) for c in extras]
        rows.append([str(r[c]) for c in labels] +
                    [format_value(_number(r["value"]), _number(r["ci_low"]), _number(r["ci_high"])), baseline_text] + extra)
    return frame, _table(labels + ["value [95 % interval]", "baseline"] + [f"{c} [95 % interval]" for c in extras], rows)


def render_timings(snapshot: dict[str, Any], options: dict[str, str]) -> tuple[Any, str]:
    frame = _filtered(snapshot[TIMINGS], options, ("top",))
    ordered = frame.sort_values("wall_seconds", ascending=False, kind="stable")
    rows = [[f"all {len(frame)} stage executions", f"{frame['wall_seconds'].sum():.0f}", f"{frame['cpu_seconds'].sum():.0f}"]]
    top = int(options.get("top", len(frame)))
    rows += [[r.folder, f"{r.wall_seconds:.0f}", f"{r.cpu_seconds:.0f}"] for r in ordered.head(top).itertuples(index=False)]
    return frame, _table(["stage execution (output folder)", "wall s", "CPU s"], rows)


def render_evaluate(snapshot: dict[str, Any], options: dict[str, str]) -> tuple[Any, str]:
    frame = _filtered(snapshot[EVALUATE], options, ())
    rows = [[r.model, r.task, r.metric, format_number(float(r.value))] for r in frame.itertuples(index=False)]
    return frame, _table(["model", "task", "metric", "value"], rows)


RENDERERS: dict[str, Callable[[dict[str, Any], dict[str, str]], tuple[Any, str]]] = {
    "findings": render_findings, "headline": render_headline, "timings": render_timings,
    "evaluate": render_evaluate,
}


def render(spec: str, snapshot: dict[str, Any]) -> str:
    """The body of the block ``spec`` from the snapshot tables."""
    kind, options = parse_spec(spec)
    if kind not in RENDERERS:
        raise QuoteError(f"unknown quote kind {kind!r}: use one of {sorted(RENDERERS)}")
    frame, text = RENDERERS[kind](snapshot, options)
    if not len(frame):
        raise QuoteError(f"`quote {spec}` matches no row of the snapshot: check its filters")
    return text


def load_snapshot(folder: str | Path = "results") -> dict[str, Any]:
    import pandas as pd

    folder = Path(folder)
    missing = [n for n in (FINDINGS, HEADLINE, TIMINGS, EVALUATE) if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"the snapshot {folder} lacks {missing}: run "
                                "`python -m interpipe.report.snapshot outputs results` after a pipeline run")
    return {name: pd.read_csv(folder / name, keep_default_na=name != FINDINGS, low_memory=False)
            for name in (FINDINGS, HEADLINE, TIMINGS, EVALUATE)}


def markdown_files(paths: list[str | Path] | tuple[str | Path, ...], root: str | Path = ".") -> list[Path]:
    root = Path(root)
    files = []
    for path in paths:
        path = root / path
        files += sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.exists() else []
    return files


def find_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [Block(path, m["spec"], m["body"], m.start("body"), m.end("body")) for m in BLOCK.finditer(text)]


def outside_blocks(text: str) -> str:
    """The text of a Markdown file with every quote block's body left out."""
    return BLOCK.sub(lambda m: m["open"] + m["close"], text)


def typed_intervals(path: Path) -> list[str]:
    """Intervals written outside quote blocks (and outside code blocks, where they are example output)."""
    text = re.sub(r"```.*?```", "", outside_blocks(path.read_text()), flags=re.S)
    return TYPED_INTERVAL.findall(text)


def stale_blocks(files: list[Path], snapshot: dict[str, Any]) -> list[str]:
    """``path: quote spec`` for every block whose body differs from its rendering."""
    stale = []
    for path in files:
        for block in find_blocks(path):
            if block.body != render(block.spec, snapshot):
                stale.append(f"{path}: quote {block.spec}")
    return stale


def write_blocks(path: Path, snapshot: dict[str, Any]) -> bool:
    """Re-render every block of ``path`` in place; True if the file changed."""
    text = path.read_text()
    new = BLOCK.sub(lambda m: m["open"] + render(m["spec"], snapshot) + m["close"], text)
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render or check the quoted result blocks of the docs.")
    parser.add_argument("files", nargs="*", default=list(DEFAULT_FILES), help="Markdown files or folders")
    parser.add_argument("--snapshot", default="results", help="the committed snapshot folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="re-render every block in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a block differs (the default)")
    args = parser.parse_args(argv)
    snapshot = load_snapshot(args.snapshot)
    files = markdown_files(args.files)
    if args.write:
        for path in files:
            if write_blocks(path, snapshot):
                print(f"updated {path}")
        return 0
    stale = stale_blocks(files, snapshot)
    for line in stale:
        print(f"stale: {line} (run `python -m interpipe.report.quote --write`)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
