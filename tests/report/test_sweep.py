"""A real Hydra multirun with the joblib launcher lands in the aggregate table."""

from __future__ import annotations

import os
import subprocess
import sys

from interpipe.report import ReportSettings, find_runs, tidy_results
from tests.conftest import ROOT
from tests.report.wandb_readback import offline_runs, read_run


def test_joblib_sweep_lands_in_the_aggregate_table(tmp_path):
    sweep_dir = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    cmd = [sys.executable, str(ROOT / "tests" / "report" / "toy_stage.py"), "-m", "model=toy,minilm", "seed=3",
           "hydra/launcher=local", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
           f"logger.dir={tmp_path / 'wandb'}", "logger.mode=offline",
           "hydra.job.config.override_dirname.exclude_keys=[logger.dir,logger.mode]"]  # no paths in folder names
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "INTERPIPE_GROUP": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib" in done.stdout + done.stderr  # the joblib launcher ran the jobs

    results = tidy_results(find_runs(tmp_path, ReportSettings()))
    got = sorted((r.study, r.stage, r.model, r.method, r.task, r.setting, r.metric, r.value)
                 for r in results.itertuples() if r.metric != "stage_seconds")
    # logger.* overrides are not part of the setting; the method is the one the stage names in run.json
    assert got == [
        ("toy_stage", "toy_stage", "minilm", "known", "ioi", "seed=3", "accuracy", 0.8),
        ("toy_stage", "toy_stage", "toy", "known", "ioi", "seed=3", "accuracy", 0.3),
    ]
    assert set(results["run_dir"]) == {f"multirun/2026-01-01/12-00-00/model={m},seed=3" for m in ("toy", "minilm")}

    runs = [read_run(d) for d in offline_runs(tmp_path / "wandb")]
    assert sorted(r["name"] for r in runs) == ["toy_stage-minilm-known", "toy_stage-toy-known"]
    assert {r["group"] for r in runs} == {"sweep-" + str(sweep_dir).strip("/").replace("/", "-")}
