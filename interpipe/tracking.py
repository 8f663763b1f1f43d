"""Weights & Biases logging: one run per stage execution.

Offline by default (no account needed; ``wandb sync <run_dir>`` uploads later), online when
``mode="online"``, disabled with ``mode="disabled"`` (the ``logger=none`` config). The run's
``config`` is the resolved stage config, ``group`` the pipeline run or sweep, ``job_type`` the
stage; metrics go to the summary, every PNG in the output folder is logged as an image and
every small CSV/Parquet table as a ``wandb.Table``.

With ``background=True`` (``make run`` sets it) the stage hands the logging to a detached process
(:func:`log_in_background`) and returns, so a pipeline does not wait on W&B's start-up and
uploads; ``python -m interpipe.tracking --wait <dir>`` waits until every handed-off run is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from interpipe.io import flatten_metrics
from typing import Any, Mapping

MODES = ("offline", "online", "disabled")


@dataclass
class TrackingSettings:
    """How a stage logs to W&B."""

    mode: str = "offline"  # offline works without an account; `wandb sync` uploads later
    project: str = "interpipe"
    entity: str | None = None
    group: str | None = None  # pipeline run or sweep id; None = one per stage
    name: str | None = None  # run name; stages set stage-model-method
    tags: list[str] = field(default_factory=list)
    dir: str = "."  # W&B writes runs to <dir>/wandb/offline-run-*
    max_table_rows: int = 5000  # larger tables are logged truncated
    background: bool = False  # log from a detached process once the stage's outputs are in place (make run)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"logger.mode={self.mode!r} is not one of {MODES}")


def default_group(env: Mapping[str, str], sweep_dir: str | None = None) -> str | None:
    """The W&B group of a stage execution: the pipeline run or sweep it belongs to.

    In order: ``INTERPIPE_GROUP`` (set it to tie runs together yourself; ``make run`` does),
    the Hydra sweep folder of a multirun job (``sweep-2026-01-31-12-00-00``), the DVC
    experiment (``exp-<name>`` under ``dvc exp run``), the ``dvc repro`` process that runs the
    stage (``repro-<its start time>``), else None (W&B shows the run ungrouped).

    >>> default_group({"INTERPIPE_GROUP": "nightly"}, "multirun/x")
    'nightly'
    >>> default_group({}, "multirun/2026-01-31/12-00-00")
    'sweep-2026-01-31-12-00-00'
    >>> default_group({"DVC_EXP_NAME": "bits4"})
    'exp-bits4'
    """
    if env.get("INTERPIPE_GROUP"):
        return env["INTERPIPE_GROUP"]
    if sweep_dir:
        path = Path(sweep_dir)
        parts = path.parts[1:] if path.parts and path.parts[0] == "multirun" and len(path.parts) > 1 else path.parts
        return "sweep-" + "-".join(p for p in parts if p not in ("/", ""))[:120]
    if env.get("DVC_EXP_NAME"):
        return f"exp-{env['DVC_EXP_NAME']}"
    if env.get("DVC_STAGE"):
        started = _dvc_started()
        return f"repro-{started}" if started else "repro"
    return None


def _dvc_started() -> str | None:
    """Start time (``YYYYmmdd-HHMMSS``, UTC) of the nearest ``dvc`` ancestor process (Linux)."""
    import time

    try:
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        pid, ticks = os.getppid(), os.sysconf("SC_CLK_TCK")
        for _ in range(4):  # dvc -> shell -> python, and a little slack
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if any(Path(arg.decode(errors="replace")).name.startswith("dvc") for arg in cmdline[:3]):
                return time.strftime("%Y%m%d-%H%M%S", time.gmtime(boot + int(stat[19]) / ticks))
            pid = int(stat[1])
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return None


def name_run(settings: TrackingSettings, job_type: str, model: str, method: str | None = None,
             study: str | None = None, tags: list[str] | None = None, sweep_dir: str | None = None,
             env: Mapping[str, str] | None = None) -> TrackingSettings:
    """Fill the run's name (stage-model-method), group and tags (stage, study, model, method).

    Values the user set in the config (``logger.name=...``, ``logger.group=...``) are kept.

    >>> s = name_run(TrackingSettings(), "attribute", "toy", "saliency", "attribution", env={})
    >>> s.name, s.group, s.tags
    ('attribute-toy-saliency', None, ['attribute', 'attribution', 'toy', 'saliency'])
    """
    settings.name = settings.name or "-".join(p for p in (job_type, model, method) if p)
    settings.group = settings.group or default_group(env or {}, sweep_dir)
    wanted = [*settings.tags, job_type, study, model, method, *(tags or [])]
    settings.tags = list(dict.fromkeys(str(t)[:64] for t in wanted if t))
    return settings


class Tracker:
    """A thin wrapper around one ``wandb`` run; a no-op when disabled."""

    def __init__(self, settings: TrackingSettings, job_type: str, config: dict[str, Any]):
        self.settings = settings
        self.run = None
        if settings.mode == "disabled":
            return
        import wandb

        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=settings.project, entity=settings.entity, group=settings.group, job_type=job_type,
            name=settings.name, tags=list(settings.tags), config=config, mode=settings.mode,
            dir=settings.dir, reinit="create_new",
        )

    @property
    def run_dir(self) -> Path | None:
        """The local folder of the run (``.../wandb/offline-run-*``), or None when disabled."""
        return None if self.run is None else Path(self.run.dir).parent

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        flat = {k: v for k, v in flatten_metrics(metrics).items() if isinstance(v, (int, float, str, bool))}
        self.run.log(flat)
        self.run.summary.update(flat)

    def log_curve(self, points: list[dict[str, Any]], step_key: str = "step") -> None:
        """Log a training curve as a series of steps."""
        if self.run is None:
            return
        for point in points:
            self.run.log({k: v for k, v in point.items() if k != step_key}, step=int(point[step_key]))

    def log_folder(self, folder: str | Path) -> None:
        """Log every PNG as an image, every CSV/Parquet table as a W&B table, every HTML page."""
        if self.run is None:
            return
        import pandas as pd
        import wandb

        folder = Path(folder)
        for png in sorted(folder.rglob("*.png")):
            self.run.log({f"figures/{png.relative_to(folder).with_suffix('')}": wandb.Image(str(png))})
        for table in sorted([*folder.rglob("*.csv"), *folder.rglob("*.parquet")]):
            frame = pd.read_csv(table) if table.suffix == ".csv" else pd.read_parquet(table)
            frame = frame.head(self.settings.max_table_rows)
            frame = frame.map(lambda v: str(v) if isinstance(v, (list, dict)) or hasattr(v, "tolist") else v)
            self.run.log({f"tables/{table.relative_to(folder).with_suffix('')}": wandb.Table(dataframe=frame)})
        for page in sorted(folder.rglob("*.html")):
            self.run.log({f"pages/{page.relative_to(folder).with_suffix('')}": wandb.Html(page.read_text())})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


PENDING = "pending"  # <dir>/wandb/pending/<id>.json: a run handed to a background logger, not yet written


def log_execution(settings: TrackingSettings, job_type: str, config: dict[str, Any], metrics: dict[str, Any],
                  folder: str | Path) -> None:
    """One W&B run for one stage execution: its config, metrics, figures and tables."""
    tracker = Tracker(settings, job_type=job_type, config=config)
    try:
        tracker.log_metrics(metrics)
        tracker.log_folder(folder)
    finally:
        tracker.finish()


def log_in_background(settings: TrackingSettings, job_type: str, config: dict[str, Any], metrics: dict[str, Any],
                      folder: str | Path) -> Path:
    """Hand :func:`log_execution` to a detached ``python -m interpipe.tracking <job>``; return the job file."""
    import json
    import subprocess
    import sys
    import uuid
    from dataclasses import asdict

    pending = Path(settings.dir) / "wandb" / PENDING
    pending.mkdir(parents=True, exist_ok=True)
    job = pending / f"{job_type}-{uuid.uuid4().hex[:12]}.json"
    payload = {"settings": asdict(settings), "job_type": job_type, "config": config, "metrics": metrics,
               "folder": str(Path(folder).resolve())}
    tmp = job.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    tmp.replace(job)
    with open(job.with_suffix(".log"), "w") as log:
        subprocess.Popen([sys.executable, "-m", "interpipe.tracking", str(job)], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return job


def run_job(job: str | Path) -> None:
    """The background logger: write the run a stage handed off, then remove its job file."""
    import json

    job = Path(job)
    payload = json.loads(job.read_text())
    settings = TrackingSettings(**{**payload["settings"], "background": False})
    log_execution(settings, payload["job_type"], payload["config"], payload["metrics"], payload["folder"])
    job.unlink()
    job.with_suffix(".log").unlink(missing_ok=True)


def wait_for_pending(root: str | Path, timeout: float = 300.0) -> list[Path]:
    """Wait until no handed-off run is left under ``root/wandb/pending``; return those still left."""
    import time

    pending = Path(root) / "wandb" / PENDING
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(pending.glob("*.json")) if pending.is_dir() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--wait":
        left = wait_for_pending(args[1])
        for job in left:
            print(f"W&B run not written yet: {job} (its log: {job.with_suffix('.log')})", file=sys.stderr)
        return 1 if left else 0
    if len(args) == 1:
        run_job(args[0])
        return 0
    print("usage: python -m interpipe.tracking <job.json> | --wait <logger.dir>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
