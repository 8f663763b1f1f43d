"""The cache stays valid on a machine that writes bytecode: importing, running and testing the code,
or editing it, adds files beside the sources that DVC must not hash into a directory dep.

The tracked tree is copied to ``tmp_path``; every directory dep's hash is taken, the package is imported
and compiled there with bytecode writing on (as on an ordinary Python install), editor and tool files
are planted, and the hashes are taken again. A planted source file must change them (the check can fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LITTER = ["__pycache__/stale.cpython-311.pyc", "notes.py~", ".notes.py.swp", ".DS_Store", ".pytest_cache/v/x",
          ".ipynb_checkpoints/a-checkpoint.ipynb", ".mypy_cache/3.11/x.json", "#draft.py#", ".idea/workspace.xml"]


def _tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm", "-f"], cwd=dest, check=True)
    return dest


def _dir_dep_hashes(repo_root: Path) -> dict[tuple[str, str], str]:
    """``(stage, dep path) -> hash`` for every directory dep of the default pipeline."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        return {(stage.addressing, dep.def_path): str(dep.get_hash())
                for stage in repo.index.stages if Path(stage.path).parent == repo_root
                for dep in stage.deps if (repo_root / dep.def_path).is_dir()}


def _dir_deps(hashes: dict[tuple[str, str], str]) -> list[str]:
    return sorted({path for _, path in hashes})


def test_bytecode_and_editor_files_leave_dir_deps_unchanged(tmp_path):
    copy = _tracked_copy(tmp_path / "repo")
    before = _dir_dep_hashes(copy)
    assert before, "dvc.yaml has no directory deps: this test checks nothing"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(copy)
    # what running the code writes: bytecode of every imported module, then of every file
    subprocess.run([sys.executable, "-c", "import interpipe.settings, interpipe.data, stages.schema"],
                   cwd=copy, env=env, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "interpipe", "stages", "conf"], cwd=copy, env=env,
                   check=True)
    assert list((copy / "interpipe" / "data").glob("__pycache__/*.pyc")), "no bytecode was written"
    for folder in _dir_deps(before):
        for name in LITTER:
            (copy / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / folder / name).write_text("litter")
    after = _dir_dep_hashes(copy)
    assert after == before, sorted(k for k in before if after.get(k) != before[k])

    planted = copy / _dir_deps(before)[0] / "new_module.py"  # a real source change is seen
    planted.write_text("X = 1\n")
    changed = _dir_dep_hashes(copy)
    assert any(changed[k] != before[k] for k in before if k[1] == _dir_deps(before)[0])
