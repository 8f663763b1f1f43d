"""The DVC pipeline: stages run from dvc.yaml, and a second `dvc repro` is a no-op."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def _dvc(cwd: Path, *args: str, bytecode: bool = False) -> subprocess.CompletedProcess:
    """``dvc *args`` in ``cwd``; ``bytecode``: Python writes ``__pycache__`` as on an ordinary install."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "disabled",
           "DVC_NO_ANALYTICS": "1"}
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_dvc_yaml_stages_are_wired_to_stage_modules():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        module = body["cmd"].split("-m ", 1)[1].split()[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"stage {name}: {module} missing"
        assert f"{module.replace('.', '/')}.py" in body["deps"], f"stage {name} must depend on its script"
        assert "hydra.run.dir=" in body["cmd"], f"stage {name} must fix hydra.run.dir inside its outs"


def test_repro_then_noop(tmp_path):
    """`dvc repro prepare` runs the stage; a second one changes nothing and says so, also where the
    first run wrote bytecode into the stage's directory deps (``.dvcignore``)."""
    repo = tmp_path / "repo"
    (repo / "pipelines").mkdir(parents=True)
    for item in ("conf", "stages", "interpipe", "dvc.yaml", "pyproject.toml", ".dvcignore", "pipelines/python"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / item)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert _dvc(repo, "init", "-q").returncode == 0
    first = _dvc(repo, "repro", "prepare", bytecode=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (repo / "outputs" / "data" / "ioi" / "dataset_dict.json").exists()
    assert (repo / "dvc.lock").exists()
    assert list((repo / "interpipe" / "data").glob("__pycache__/*.pyc")), "the run wrote no bytecode"
    second = _dvc(repo, "repro", "prepare", bytecode=True)
    assert second.returncode == 0
    assert "didn't change" in second.stdout and "Running stage" not in second.stdout
