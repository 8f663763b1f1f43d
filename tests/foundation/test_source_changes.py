"""``run.json``'s ``git_dirty`` says whether tracked source files differ from the commit: a run's own
``dvc.lock`` rewrite does not count, an edited source file does (at any depth, from any folder), and the
report names the runs made from changed sources."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from interpipe.run_record import run_identity
from interpipe.runtime import changed_source_files


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a", *args], check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pipelines" / "extra").mkdir(parents=True)
    for name in ("pkg/mod.py", "dvc.lock", "pipelines/extra/dvc.lock", "dvc.yaml"):
        (tmp_path / name).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def _identity(monkeypatch, cwd: Path) -> dict:
    monkeypatch.chdir(cwd)
    return run_identity(stage="evaluate", study="evaluate", model={"name": "toy"}, config={}, seed=0, device="cpu",
                        dtype="float32")


def test_a_clean_clone_is_clean(repo, monkeypatch):
    assert changed_source_files(repo) == []
    assert _identity(monkeypatch, repo)["git_dirty"] is False


def test_the_runs_own_lock_files_do_not_count(repo, monkeypatch):
    (repo / "dvc.lock").write_text("rewritten by dvc repro\n")
    (repo / "pipelines" / "extra" / "dvc.lock").write_text("rewritten\n")
    (repo / "outputs").mkdir()
    (repo / "outputs" / "metrics.json").write_text("{}")  # untracked outputs
    assert changed_source_files(repo) == []
    assert _identity(monkeypatch, repo)["git_dirty"] is False


def test_an_edited_source_file_counts_from_any_folder(repo, monkeypatch):
    (repo / "pkg" / "mod.py").write_text("v2\n")
    (repo / "dvc.yaml").write_text("v2\n")
    _git(repo, "add", "dvc.yaml")  # staged changes count too
    assert changed_source_files(repo / "pipelines") == ["dvc.yaml", "pkg/mod.py"]
    identity = _identity(monkeypatch, repo / "pkg")
    assert identity["git_dirty"] is True and identity["git_changed_files"] == ["dvc.yaml", "pkg/mod.py"]


def test_outside_a_repository_nothing_is_claimed(tmp_path, monkeypatch):
    assert changed_source_files(tmp_path) is None
    assert _identity(monkeypatch, tmp_path)["git_dirty"] is None


def test_the_report_names_runs_from_changed_sources(repo):
    from interpipe.report.page import render_page, revision_info

    revision = {**revision_info(repo), "changed_source_runs": ["outputs/evaluate/toy"]}
    page = render_page("r", revision, [], {}, {}, {}, n_runs=3, n_rows=0)
    assert "1 of\n3 runs were made from source files that differed" in page and "outputs/evaluate/toy" in page
    (repo / "pkg" / "mod.py").write_text("v2\n")
    page = render_page("r", revision_info(repo), [], {}, {}, {}, n_runs=3, n_rows=0)
    assert "uncommitted changes to\npkg/mod.py" in page and "runs were made from" not in page


def test_the_results_snapshot_and_quoted_docs_do_not_count(repo):
    """`make run` rewrites results/*.csv and the quoted blocks of the Markdown docs after the stages ran."""
    for name in ("results/findings.csv", "README.md", "docs/circuits.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("v1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "docs")
    for name in ("results/findings.csv", "README.md", "docs/circuits.md"):
        (repo / name).write_text("rewritten by make run\n")
    assert changed_source_files(repo) == []
    (repo / "pkg" / "mod.py").write_text("v2\n")
    assert changed_source_files(repo) == ["pkg/mod.py"]
