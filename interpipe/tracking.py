"""Weights & Biases logging: one run per stage execution.

Offline by default (no account needed; ``wandb sync <run_dir>`` uploads later), online when
``mode="online"``, disabled with ``mode="disabled"`` (the ``logger=none`` config). The run's
``config`` is the resolved stage config, ``group`` the pipeline run or sweep, ``job_type`` the
stage; metrics go to the summary, every PNG in the output folder is logged as an image and
every small CSV/Parquet table as a ``wandb.Table``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    dir: str = "wandb"  # where offline runs are written
    max_table_rows: int = 5000  # larger tables are logged truncated

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"logger.mode={self.mode!r} is not one of {MODES}")


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
        flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float, str, bool))}
        self.run.log(flat)
        self.run.summary.update(flat)

    def log_curve(self, points: list[dict[str, Any]], step_key: str = "step") -> None:
        """Log a training curve as a series of steps."""
        if self.run is None:
            return
        for point in points:
            self.run.log({k: v for k, v in point.items() if k != step_key}, step=int(point[step_key]))

    def log_folder(self, folder: str | Path) -> None:
        """Log every PNG as an image and every CSV/Parquet table as a W&B table."""
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

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out
