"""Aggregation of every study's results into one tidy table and one self-contained page.

``find_runs`` walks the output roots for ``metrics.json`` files (``dvc repro`` outputs and Hydra
multirun folders alike), ``tidy_results`` turns them into rows
``study, stage, model, method, task, setting, metric, value, run_dir, config_hash``,
``study_tables`` builds the per-study comparison tables with the best values marked, and
``run_aggregate`` writes all of it, with ``index.html``, into ``outputs/report/``.
``python -m interpipe.report.summary outputs/report`` prints where the page is and a summary table.
"""

from interpipe.report.aggregate import Report, collect, run_aggregate
from interpipe.report.compare import StudyTable, study_tables
from interpipe.report.discover import COLUMNS, RunRecord, find_runs, tidy_results
from interpipe.settings.report import ReportSettings

__all__ = ["COLUMNS", "Report", "ReportSettings", "RunRecord", "StudyTable", "collect", "find_runs",
           "run_aggregate", "study_tables", "tidy_results"]
