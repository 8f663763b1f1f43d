"""`dvc exp run --queue -S` grid over a conf file, run by a queue worker, compared by `dvc metrics diff`.

A throwaway git+DVC repository holds a copy of conf/ and stages/ and a one-stage pipeline (the
real aggregate stage over a fixed results folder), so the documented sweep commands are checked
end to end with this DVC version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

DVC_YAML = """metrics:
  - outputs/report/metrics.json
stages:
  aggregate:
    cmd: python -m stages.aggregate hydra.run.dir=outputs/report logger=none
    deps:
      - stages/aggregate.py
      - outputs/evaluate
    params:
      - conf/report/default.yaml:
    outs:
      - outputs/report
"""


def _run(repo: Path, *args: str, env: dict) -> str:
    done = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_dvc_exp_queue_grid(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "conf", repo / "conf")
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "outputs" / "evaluate" / "toy").mkdir(parents=True)
    (repo / "outputs" / "evaluate" / "toy" / "metrics.json").write_text(json.dumps({"ioi/accuracy": 0.5}))
    (repo / "dvc.yaml").write_text(DVC_YAML)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    git = lambda *a: _run(repo, "git", *a, env=env)  # noqa: E731
    dvc = lambda *a: _run(repo, "dvc", *a, env=env)  # noqa: E731
    git("init", "-q")
    dvc("init", "-q")
    dvc("config", "core.analytics", "false")
    git("add", "-A")
    git("commit", "-qm", "pipeline")
    out = dvc("exp", "run", "--queue", "-S", "conf/report/default.yaml:title=A,B")
    assert out.count("Queued experiment") == 2
    dvc("queue", "start", "-j", "1")
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            status = dvc("queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:
        dvc("queue", "stop")
    assert status.count("Success") == 2, status
    shown = json.loads(dvc("exp", "show", "--json"))
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert len(exps) == 2
    names = [e["name"] for e in exps]
    diff = json.loads(dvc("metrics", "diff", names[0], names[1], "--json", "--all"))
    assert diff["outputs/report/metrics.json"]["n_runs"]["new"] == 1  # metrics load from both experiments
