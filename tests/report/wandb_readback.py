"""Read an offline W&B run back from its ``.wandb`` file with ``wandb leet inspect``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WANDB = str(Path(sys.executable).parent / "wandb")


def read_run(run_dir: Path) -> dict:
    """``{name, group, job_type, tags, summary}`` of one offline run folder."""
    records = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    run = next(json.loads(line)["run"] for line in records.splitlines() if '"type":"run"' in line)
    summary = json.loads(subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
                                        capture_output=True, text=True, check=True, timeout=60).stdout)
    return {"name": run.get("display_name"), "group": run.get("run_group"), "job_type": run.get("job_type"),
            "tags": run.get("tags", []), "summary": summary.get("summary", {})}


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(Path(wandb_dir).rglob("offline-run-*"))
