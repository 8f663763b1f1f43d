"""Two runs' metrics compared within the stated tolerance, costs left out, from folders or through DVC."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from interpipe.report.reproduce import ATOL, RTOL, differences, dvc_differences, main, metric_files


def _write(root, name, data):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(data))


def test_folders_differ_only_beyond_the_tolerance(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "evaluate/toy/metrics.json", {"ioi/logit_diff": -0.07615627, "acc": 0.5, "stage_seconds": 3.0,
                                            "nested": {"x": [1.0, 2.0]}, "only_a": 1})
    _write(b, "evaluate/toy/metrics.json", {"ioi/logit_diff": -0.07615646, "acc": 0.5 * (1 + 10 * RTOL),
                                            "stage_seconds": 9.0, "nested": {"x": [1.0, 2.0 + ATOL / 2]}})
    _write(a, "evaluate/toy/headline.json", {"gap": 0.0})
    _write(b, "evaluate/toy/headline.json", {"gap": 5 * ATOL})
    found = {(r["file"], r["key"]) for r in differences(metric_files(a), metric_files(b))}
    assert found == {("evaluate/toy/metrics.json", "acc"), ("evaluate/toy/metrics.json", "only_a"),
                     ("evaluate/toy/headline.json", "gap")}
    assert main([str(a), str(a)]) == 0 and main([str(a), str(b)]) == 1
    assert "3 result(s) differ beyond" in capsys.readouterr().out


def test_dvc_metrics_diff_against_a_commit(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*args):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, env=env)

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text("metrics:\n- m.json\n")
    _write(tmp_path, "m.json", {"loss": 1.0, "seconds": 1.0, "acc": 0.5})
    run("git", "add", ".")
    run("git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "first")
    _write(tmp_path, "m.json", {"loss": 1.0 + 1e-7, "seconds": 7.0, "acc": 0.75})
    found = dvc_differences("HEAD", cwd=tmp_path)
    assert [(r["key"], r["first"], r["second"]) for r in found] == [("acc", 0.5, 0.75)]
