"""The cluster launcher's code path without a cluster: `hydra/launcher=slurm_local` runs a sweep
through submitit's local executor (same pickling, job folders and logs as `slurm`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_submitit_local_sweep_runs_every_job(tmp_path):
    sweep_dir = tmp_path / "multirun"
    cmd = [sys.executable, str(ROOT / "tests" / "report" / "toy_stage.py"), "-m", "model=toy", "seed=1,2",
           "hydra/launcher=slurm_local", "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep_dir}",
           "logger=none"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "INTERPIPE_GROUP": ""})
    assert done.returncode == 0, done.stderr[-3000:]

    # submitit's own job records: one pickled submission and one result per job
    records = sorted(p.name for p in (sweep_dir / ".submitit").rglob("*_result.pkl"))
    assert len(records) == 2, sorted(p.name for p in (sweep_dir / ".submitit").rglob("*"))
    for seed in (1, 2):
        job = sweep_dir / f"model=toy,seed={seed}"
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["ioi/accuracy"] == seed / 10  # the known answer of toy_stage for this seed
