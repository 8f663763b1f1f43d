"""The ``aggregate`` stage's work: collect every result into ``outputs/report/``.

Writes, into ``out_dir``:

- ``results.csv`` / ``results.parquet`` — the tidy table (``discover.COLUMNS``), one row per
  run and numeric metric, from ``outputs/`` and every Hydra multirun folder;
- ``tables/<study>.csv`` — per-study comparison tables (methods × metrics, ``best`` column);
- ``plots/<study>.csv`` — the study's headline metric per run, for ``dvc plots``;
- ``figures/<study>/*.png`` — the key figures, downscaled (W&B logs them as images);
- ``findings.csv`` — one finding per study and model: the headline number, its interval, its floor or
  baseline and a verdict in words (:mod:`interpipe.report.findings`);
- ``index.html`` — the self-contained report page, the findings first.

The returned flat dict (counts and the best value of every compared metric per study) becomes
``outputs/report/metrics.json``, which ``dvc metrics diff`` compares between commits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from interpipe.io import read_json, write_frame, write_text
from interpipe.report.compare import StudyTable, lower_is_better, plot_frame, study_tables
from interpipe.report.findings import FILE as FINDINGS_FILE
from interpipe.report.findings import Finding, collect_findings, findings_frame
from interpipe.report.discover import RunRecord, find_figures, find_named, find_runs, tidy_results
from interpipe.headline import FILE as HEADLINE_FILE
from interpipe.headline import is_headline_figure, read_headline
from interpipe.report.page import model_cards, render_page, revision_info, shrink_png
from interpipe.settings.report import ReportSettings


@dataclass
class Report:
    """Everything the report shows: the tidy results, per-study tables, chosen figures, revision."""

    results: Any  # DataFrame with discover.COLUMNS
    tables: dict[str, StudyTable] = field(default_factory=dict)
    records: list[RunRecord] = field(default_factory=list)
    figures: dict[str, list[dict]] = field(default_factory=dict)  # study -> [{caption, png, thumbnail, width, height, file}]
    n_hidden: dict[str, int] = field(default_factory=dict)  # study -> figures left out of the page
    headlines: dict[str, Any] = field(default_factory=dict)  # study -> DataFrame of headline rows
    key_tables: dict[str, list[dict]] = field(default_factory=dict)  # study -> [{caption, frame}] (report.key_tables)
    findings: list[Finding] = field(default_factory=list)  # one per study and model, judged
    info: dict[str, Any] = field(default_factory=dict)  # revision, model cards

    def to_frame(self) -> Any:
        return self.results

    def metrics(self, settings: ReportSettings) -> dict[str, float]:
        """Flat summary for ``metrics.json``: counts, then ``<study>/best/<metric>``."""
        out: dict[str, float] = {
            "n_runs": len(self.records), "n_rows": len(self.results), "n_studies": len(self.tables),
            "n_figures": sum(len(v) for v in self.figures.values()),
            "n_runs_changed_source": sum(r.source_changed for r in self.records),
        }
        for study, table in self.tables.items():
            out[f"{study}/n_rows"] = len(table.frame)
            for metric in table.metrics:
                column = table.frame[metric].dropna()
                if len(column) and settings.direction(metric) is not None:
                    best = column.min() if lower_is_better(metric, settings) else column.max()
                    out[f"{study}/best/{metric}"] = float(best)
        return out

    def save(self, out_dir: str | Path, settings: ReportSettings, title: str = "interpipe report") -> Path:
        """Write the tables, plots, figures and ``index.html`` into ``out_dir``; return the page path."""
        out_dir = Path(out_dir)
        write_frame(out_dir / "results.csv", self.results)
        write_frame(out_dir / "results.parquet", self.results)
        for study, table in self.tables.items():
            write_frame(out_dir / "tables" / f"{study}.csv", table.frame)
        for study, frame in self.headlines.items():  # W&B logs each as a Table
            write_frame(out_dir / "headline" / f"{study}.csv", frame)
        write_frame(out_dir / FINDINGS_FILE, findings_frame(self.findings))
        studies = sorted((set(settings.studies.values()) | set(self.tables)) - {settings.study_of("aggregate")})
        for study in studies:
            write_frame(out_dir / "plots" / f"{study}.csv", plot_frame(self.results, study, settings))
        for study, figures in self.figures.items():
            for figure in figures:
                path = out_dir / "figures" / study / figure["file"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(figure["png"])
        page = render_page(title, self.info.get("revision", {}), self.info.get("cards", []), self.tables,
                           self.figures, self.n_hidden, n_runs=len(self.records), n_rows=len(self.results),
                           headlines=self.headlines, key_tables=self.key_tables, findings=self.findings,
                           order=list(dict.fromkeys(settings.studies.values())))
        return write_text(out_dir / "index.html", page)

    @classmethod
    def load(cls, out_dir: str | Path) -> "Report":
        """Read back a saved report's results (tables are rebuilt with ``study_tables``)."""
        import pandas as pd

        out_dir = Path(out_dir)
        if not (out_dir / "results.parquet").exists():
            raise FileNotFoundError(f"{out_dir} holds no results.parquet: run `dvc repro aggregate` "
                                    f"or `python -m stages.aggregate hydra.run.dir={out_dir}`")
        results = pd.read_parquet(out_dir / "results.parquet")
        info = read_json(out_dir / "metrics.json") if (out_dir / "metrics.json").exists() else {}
        return cls(results=results, info={"metrics": info})


def _figure_key(path: Path, settings: ReportSettings) -> tuple[int, str]:
    name = path.name.lower()
    if is_headline_figure(path):
        return -1, str(path)  # a study's own key figures come first and always make the page
    rank = next((i for i, p in enumerate(settings.key_figures) if re.search(p, name)), len(settings.key_figures))
    return rank, str(path)


def collect(settings: ReportSettings, repo: str | Path = ".", env: Mapping[str, str] | None = None,
            progress: bool = True) -> Report:
    """Discover runs and figures under ``repo`` and build the report (nothing is written)."""
    repo = Path(repo).resolve()
    records = find_runs(repo, settings)
    results = tidy_results(records, settings.tasks)
    figures: dict[str, list[dict]] = {}
    hidden: dict[str, int] = {}
    by_study: dict[str, list[Path]] = {}
    for study, path in find_figures(repo, settings):
        by_study.setdefault(study, []).append(path)
    chosen = {s: sorted(paths, key=lambda p: _figure_key(p, settings))[: settings.max_figures_per_study]
              for s, paths in by_study.items()}
    hidden = {s: len(by_study[s]) - len(chosen[s]) for s in by_study}
    todo = [(s, p) for s, paths in sorted(chosen.items()) for p in paths]
    for study, path in tqdm(todo, desc="report figures", disable=not progress or not todo):
        rel = path.relative_to(repo).as_posix()
        headline = is_headline_figure(path)
        try:
            png, width, height = shrink_png(path, settings.figure_width_px)
            thumb = png if headline else shrink_png(path, settings.thumbnail_width_px)[0]
        except OSError:
            continue  # not a readable image
        file = re.sub(r"[^A-Za-z0-9_.=-]+", "_", rel.split("/", 1)[-1].replace("/", "__"))
        figures.setdefault(study, []).append({"caption": rel, "png": png, "width": width, "height": height,
                                              "thumbnail": thumb, "file": file, "headline": headline})
    revision = {**revision_info(repo, env), "changed_source_runs": sorted({r.run_dir for r in records if r.source_changed})}
    info = {"revision": revision, "cards": model_cards(repo / settings.models_dir)}
    headlines = collect_headlines(repo, settings)
    return Report(results=results, tables=study_tables(results, settings), records=records,
                  figures=figures, n_hidden=hidden, info=info, headlines=headlines,
                  key_tables=collect_key_tables(repo, settings),
                  findings=collect_findings(headlines, figures, stage_order=list(settings.studies)))


def collect_key_tables(repo: Path, settings: ReportSettings) -> dict[str, list[dict]]:
    """The small tables a study writes beside its headline (``report.key_tables``), per study."""
    import pandas as pd

    found: dict[str, list[dict]] = {}
    for name in settings.key_tables:
        for record, path in find_named(repo, settings, name):
            try:
                frame = pd.read_csv(path)
            except (OSError, ValueError):
                continue
            found.setdefault(record.study, []).append({"caption": path.relative_to(repo).as_posix(), "frame": frame})
    return {study: sorted(tables, key=lambda t: t["caption"]) for study, tables in sorted(found.items())}


def collect_headlines(repo: Path, settings: ReportSettings) -> dict[str, Any]:
    """Every ``headline.csv`` per study, models side by side, with where each row came from."""
    import pandas as pd

    frames: dict[str, list] = {}
    for record, path in find_named(repo, settings, HEADLINE_FILE):
        try:
            frame = read_headline(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue  # a damaged or foreign file: the full table still has the run's numbers
        frame.insert(0, "stage", record.stage)
        frame["setting"] = record.setting
        frame["run_dir"] = record.run_dir
        frames.setdefault(record.study, []).append(frame)
    return {study: pd.concat(parts, ignore_index=True).sort_values(["stage", "task", "method", "metric", "model"],
                                                                   kind="stable").reset_index(drop=True)
            for study, parts in sorted(frames.items())}


def run_aggregate(settings: ReportSettings, out_dir: str | Path, repo: str | Path = ".",
                  env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Collect everything under ``repo`` and write the report into ``out_dir``; return the metrics."""
    report = collect(settings, repo, env)
    report.save(out_dir, settings, title=settings.title)
    return report.metrics(settings)

