"""W&B runs carry name = stage-model-method, group = pipeline run or sweep, tags = study/model/method."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from interpipe.tracking import TrackingSettings, default_group, name_run
from stages._app import run_stage
from tests.conftest import compose
from tests.report.wandb_readback import offline_runs, read_run


def test_run_stage_names_groups_and_tags_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPIPE_GROUP", "repro-test")
    cfg = compose([f"paths.out={tmp_path / 'out'}", f"logger.dir={tmp_path / 'wandb'}", "logger.mode=offline"])
    run_stage(cfg, "attribute", lambda s, out, record: {"ioi/aopc": 0.5}, method="saliency")
    (run_dir,) = offline_runs(tmp_path / "wandb")
    run = read_run(run_dir)
    assert run["name"] == "attribute-toy-saliency"
    assert run["group"] == "repro-test"
    assert run["job_type"] == "attribute"
    assert run["tags"] == ["attribute", "attribution", "toy", "saliency"]
    assert run["summary"]["ioi/aopc"] == 0.5


def test_background_logging_writes_the_same_run(tmp_path, monkeypatch):
    """With logger.background the stage returns first; the detached logger writes the same run."""
    from interpipe.tracking import PENDING, wait_for_pending

    monkeypatch.setenv("INTERPIPE_GROUP", "repro-bg")
    monkeypatch.setenv("INTERPIPE_WANDB_BACKGROUND", "true")  # what make run sets; conf/logger/wandb.yaml reads it
    cfg = compose([f"paths.out={tmp_path / 'out'}", f"logger.dir={tmp_path / 'wandb'}", "logger.mode=offline"])
    assert cfg.logger.background is True
    run_stage(cfg, "attribute", lambda s, out, record: {"ioi/aopc": 0.25}, method="saliency")
    assert list((tmp_path / "wandb" / "wandb" / PENDING).glob("*.json"))  # handed off, not yet written
    assert wait_for_pending(tmp_path / "wandb", timeout=120) == []
    (run_dir,) = offline_runs(tmp_path / "wandb")
    run = read_run(run_dir)
    assert (run["name"], run["group"], run["summary"]["ioi/aopc"]) == ("attribute-toy-saliency", "repro-bg", 0.25)
    assert not list((tmp_path / "wandb" / "wandb" / PENDING).iterdir())  # job and log files removed


def test_group_order():
    assert default_group({"INTERPIPE_GROUP": "g", "DVC_EXP_NAME": "e"}, "multirun/a/b") == "g"
    assert default_group({"DVC_EXP_NAME": "e"}, "multirun/a/b") == "sweep-a-b"
    assert default_group({"DVC_EXP_NAME": "e", "DVC_STAGE": "x"}) == "exp-e"
    assert default_group({"DVC_STAGE": "evaluate@toy"}).startswith("repro")
    assert default_group({}) is None


def test_user_settings_win():
    s = name_run(TrackingSettings(name="mine", group="paper", tags=["v1"]), "quantize", "minilm", "os_plus",
                 "quantization", env={"INTERPIPE_GROUP": "ignored"})
    assert (s.name, s.group, s.tags) == ("mine", "paper", ["v1", "quantize", "quantization", "minilm", "os_plus"])


@pytest.mark.slow
def test_one_group_per_dvc_repro(tmp_path):
    """Every stage of one `dvc repro` gets the same `repro-<start time>` group."""
    cmd = 'python -c "import os; from interpipe.tracking import default_group; print(default_group(os.environ))"'
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  a:\n    cmd: {cmd} > a.txt\n    outs: [a.txt]\n  b:\n    cmd: {cmd} > b.txt\n    outs: [b.txt]\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("INTERPIPE_GROUP", None)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    a, b = ((tmp_path / f).read_text().strip() for f in ("a.txt", "b.txt"))
    assert a == b and a.startswith("repro-2")
