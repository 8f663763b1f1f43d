"""Stage commands run the project's interpreter whatever the caller's PATH (``pipelines/python``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "pipelines" / "python"


def _commands():
    for path in [ROOT / "dvc.yaml", *sorted(ROOT.glob("pipelines/*/dvc.yaml"))]:
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            yield f"{path.relative_to(ROOT)}:{name}", (stage.get("do") or stage)["cmd"]


@pytest.mark.parametrize(("name", "cmd"), list(_commands()), ids=[n for n, _ in _commands()])
def test_every_stage_runs_the_launcher(name, cmd):
    assert cmd.strip().startswith("pipelines/python -m stages."), f"{name}: {cmd!r}"


def _fake_interpreter(path: Path, says: str, rc: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{says} $*"\nexit {rc}\n')
    path.chmod(0o755)


def _launch(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(repo / "pipelines" / "python"), "-m", "stages.prepare"], capture_output=True,
                          text=True, env={"PATH": env.pop("PATH", "/usr/bin:/bin"), **env}, timeout=30)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "pipelines").mkdir()
    shutil.copy2(LAUNCHER, tmp_path / "pipelines" / "python")
    return tmp_path


def test_the_venv_wins_over_path(repo, tmp_path):
    _fake_interpreter(repo / ".venv" / "bin" / "python", "venv")
    _fake_interpreter(tmp_path / "elsewhere" / "python", "path")
    done = _launch(repo, {"PATH": f"{tmp_path / 'elsewhere'}:/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "venv -m stages.prepare", done


def test_interpipe_python_wins_over_the_venv(repo, tmp_path):
    _fake_interpreter(repo / ".venv" / "bin" / "python", "venv")
    _fake_interpreter(tmp_path / "conda" / "python", "mine")
    done = _launch(repo, {"INTERPIPE_PYTHON": str(tmp_path / "conda" / "python")})
    assert done.stdout.strip() == "mine -m stages.prepare", done


def test_without_a_venv_a_python_that_lacks_the_project_is_refused(repo, tmp_path):
    _fake_interpreter(tmp_path / "system" / "python", "system", rc=1)  # cannot import hydra, interpipe
    done = _launch(repo, {"PATH": f"{tmp_path / 'system'}:/usr/bin:/bin"})
    assert done.returncode == 127
    assert "make install" in done.stderr and "INTERPIPE_PYTHON" in done.stderr
    assert "-m stages.prepare" not in done.stdout  # the stage itself never started


def test_the_real_launcher_finds_this_checkouts_venv():
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (installed elsewhere)")
    done = subprocess.run([str(LAUNCHER), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert done.returncode == 0 and Path(done.stdout.strip()) == (ROOT / ".venv").resolve(), done
