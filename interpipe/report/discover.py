"""Find every stage execution's results and turn them into one tidy table.

Every stage execution, whether run by ``dvc repro`` (``outputs/<stage>/<model>/...``) or by a
Hydra multirun sweep (``multirun/<date>/<time>/<override_dirname>/...``), leaves a folder with
a flat ``metrics.json`` and a ``run.json`` (:mod:`interpipe.run_record`) that says what ran:
stage, study, model, method and, for a sweep, its overrides. A study that writes one sub-run
folder per method, task or setting below it has each folder describe itself in its result's own
files (``attribution.json``, ``info.json``: :mod:`interpipe.report.identity`). Nothing here knows a
study's internals beyond those files.

Folder names and Hydra's ``.hydra/`` folder (``config.yaml``, ``overrides.yaml``, ``hydra.yaml``,
in that folder or an ancestor) are read only as the fallback, for folders written before run
records and result files said what they are:

- ``stage``: the saved job name's folder under the root, else the first folder that names a
  stage (through ``stage_dirs``, e.g. ``models`` -> ``model``); for a multirun job, Hydra's job
  name (the stage module), or the stage its group's choice or a value of its config node names
  (``weights.study=bigram`` -> ``bigram``).
- ``model``: ``model.name`` of the saved config, else the folder after the stage.
- ``task``: a path part or a metric prefix (``ioi/accuracy``) that names a known task.
- ``method``: the first remaining path part (``attribute/toy/saliency`` -> ``saliency``; a
  ``<model>-<method>-<setting>`` part is split), or a swept ``*.method=``/``*.methods=[x]`` override.
- ``setting``: the remaining path parts and the other swept overrides (``quantize.bits=4``).
- ``config_hash``: the run record's, else the first 12 hex digits of the SHA-256 of the saved config.

A metric ``<sub>/<name>`` in an execution's own ``metrics.json``, where ``<sub>/`` (or
``<model>-<sub>/``) is a sub-run folder with its own ``metrics.json`` (the per-method summary a stage returns), is that sub-run's
metric: it is skipped when the sub-run reports it too, else filed under the sub-run's identity.

>>> import tempfile, json, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> run = root / "outputs" / "attribute" / "toy" / "saliency"
>>> run.mkdir(parents=True)
>>> _ = (run / "metrics.json").write_text(json.dumps({"ioi/aopc": 0.5}))
>>> frame = tidy_results(find_runs(root, ReportSettings()))
>>> frame[["study", "stage", "model", "method", "task", "metric", "value"]].values.tolist()
[['attribution', 'attribute', 'toy', 'saliency', 'ioi', 'aopc', 0.5]]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interpipe.io import flatten_metrics
from interpipe.report.identity import split_names, sub_run_identity
from interpipe.settings.report import ReportSettings

COLUMNS = ["study", "stage", "model", "method", "task", "setting", "metric", "value", "run_dir", "config_hash"]
METRIC_SEPARATORS = ("/", ".", "_")


@dataclass
class RunRecord:
    """One folder with a ``metrics.json``: where it is, what it is, what it measured."""

    run_dir: str  # relative to the repository root, POSIX separators
    study: str
    stage: str
    model: str
    method: str
    task: str
    setting: str
    config_hash: str
    metrics: dict[str, Any] = field(default_factory=dict)
    mtime: float = 0.0  # of metrics.json; the latest run wins in comparison tables
    source_changed: bool = False  # run.json's git_dirty: tracked source files differed from the commit


@dataclass
class HydraInfo:
    """What Hydra saved about one execution (empty when no ``.hydra`` folder was found)."""

    folder: Path | None = None  # the execution's output folder (parent of .hydra)
    config: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    job_name: str = ""
    multirun: bool = False
    choices: dict = field(default_factory=dict)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError:
        return None


def hydra_info(folder: Path, stop: Path) -> HydraInfo:
    """Read the ``.hydra`` folder of ``folder`` or of its nearest ancestor below ``stop``."""
    current = folder
    while True:
        if (current / ".hydra" / "config.yaml").exists():
            hydra_yaml = (_load_yaml(current / ".hydra" / "hydra.yaml") or {}).get("hydra", {}) or {}
            return HydraInfo(
                folder=current,
                config=_load_yaml(current / ".hydra" / "config.yaml") or {},
                overrides=[str(o) for o in (_load_yaml(current / ".hydra" / "overrides.yaml") or [])],
                job_name=str((hydra_yaml.get("job") or {}).get("name") or ""),
                multirun=str(hydra_yaml.get("mode", "")).upper() == "MULTIRUN",
                choices=(hydra_yaml.get("runtime") or {}).get("choices") or {},
            )
        if current == stop or current.parent == current or stop not in current.parents:
            return HydraInfo()
        current = current.parent


def config_hash(config: dict) -> str:
    """First 12 hex digits of the SHA-256 of a config (key order does not matter).

    >>> config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1})
    True
    >>> config_hash({})
    ''
    """
    if not config:
        return ""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_task(metric: str, tasks: list[str]) -> tuple[str, str]:
    """Split a task prefix off a metric name: ``ioi/accuracy`` -> ``(ioi, accuracy)``.

    >>> split_task("laundry_list_accuracy", ["ioi", "laundry_list"])
    ('laundry_list', 'accuracy')
    >>> split_task("accuracy", ["ioi"])
    ('', 'accuracy')
    """
    for task in sorted(tasks, key=len, reverse=True):
        for sep in METRIC_SEPARATORS:
            if metric.startswith(task + sep) and len(metric) > len(task) + 1:
                return task, metric[len(task) + 1:]
    return "", metric


def _stage_in_path(parts: list[str], job_name: str, settings: ReportSettings) -> tuple[str, int]:
    """``(stage, index of its folder in parts)``: the saved job name's folder, else the first known stage.

    Folders before the stage (``outputs/paper/quantize/...``) become part of the setting.

    >>> _stage_in_path(["paper", "models", "gpt2"], "model", ReportSettings())
    ('model', 1)
    >>> _stage_in_path(["talking_heads", "toy"], "weights", ReportSettings())
    ('talking_heads', 0)
    """
    stages = [settings.stage_dirs.get(p, p) for p in parts]
    known = settings.studies
    if job_name in stages:
        return job_name, stages.index(job_name)
    for i, stage in enumerate(stages):
        if stage in known and (job_name not in known or known[stage] == known[job_name]):
            return stage, i
    if job_name:
        return job_name, -1 if not parts else 0
    return (stages[0], 0) if stages else ("unknown", -1)


def run_record_of(folder: Path, root: Path) -> tuple[Path, dict] | None:
    """``(execution folder, its run.json)`` for ``folder`` or its nearest ancestor below ``root``."""
    current = folder
    while True:
        path = current / "run.json"
        if path.exists():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict) and record.get("stage"):
                return current, record
        if current == root or current.parent == current or root not in current.parents:
            return None
        current = current.parent


def _swept(overrides: list[str], method: str, task: str, settings: ReportSettings) -> tuple[str, str, list[str]]:
    """A multirun job's overrides: a swept single method or task names it, the rest are its setting."""
    swept: list[str] = []
    for override in sorted(overrides):
        key, _, value = override.lstrip("+~").partition("=")
        leaf = key.rsplit(".", 1)[-1]
        if key == "model" or key.split(".", 1)[0] in settings.ignored_overrides:
            continue
        single = value.strip("[]'\" ")  # quantize.methods=[rtn] names one method too
        if leaf in ("method", "methods") and "," not in single and method in (single, ""):
            method = method or single
        elif leaf in ("task", "tasks") and "," not in single and task in (single, ""):
            task = task or single
        else:
            swept.append(f"{key}={value}")
    return method, task, swept


def _run_dir(folder: Path, repo: Path) -> str:
    """``folder`` relative to the repository (POSIX), or as it is when outside it."""
    return folder.relative_to(repo).as_posix() if repo in folder.parents or folder == repo else str(folder)


def _identify_by_record(folder: Path, home: Path, record: dict, repo: Path, settings: ReportSettings) -> RunRecord:
    """The identity of ``folder`` at or below the execution folder ``home`` whose ``run.json`` is ``record``:
    stage, model and method from the record, the sub-run's own task, method and setting from its files."""
    stage = str(record["stage"])
    named = record.get("setting")  # weights.study=bigram: the weights stage ran the bigram study
    if isinstance(named, str) and named in settings.studies and settings.study_of(named) == settings.study_of(stage):
        stage = named
    model = "" if stage in settings.model_free else str((record.get("model") or {}).get("name") or "")
    method = str(record.get("method") or "")  # the task comes from a sub-run folder or a metric's prefix
    task, method, rest = sub_run_identity(folder, home, model, method, settings)
    swept: list[str] = []
    if record.get("multirun"):
        method, task, swept = _swept([str(o) for o in record.get("overrides") or []], method, task, settings)
    setting = ",".join(swept + ["/".join(rest)] * bool(rest))
    return RunRecord(
        run_dir=_run_dir(folder, repo),
        study=settings.study_of(stage), stage=stage, model=model, method=method, task=task, setting=setting,
        config_hash=str(record.get("config_hash") or ""), source_changed=bool(record.get("git_dirty")),
    )


def identify(folder: Path, root: Path, repo: Path, settings: ReportSettings) -> RunRecord:
    """Work out study/stage/model/method/task/setting of an output folder under ``root``.

    The execution's ``run.json`` says what ran; a study's sub-run folders below it add method, task
    and setting from their own result files (:func:`interpipe.report.identity.sub_run_identity`),
    read off their names only where they hold none. Folders written before run records existed are
    read off their path and ``.hydra`` folder instead.
    """
    found = run_record_of(folder, root)
    if found is not None:
        return _identify_by_record(folder, found[0], found[1], repo, settings)
    return _identify_by_path(folder, root, repo, settings)


def _identify_by_path(folder: Path, root: Path, repo: Path, settings: ReportSettings) -> RunRecord:
    """The identity of a folder without ``run.json``, from its path and its Hydra files."""
    info = hydra_info(folder, root)
    parts = list(folder.relative_to(root).parts)
    prefix: list[str] = []
    if info.multirun and info.folder is not None:
        stage = info.job_name or "unknown"
        node = info.config.get(stage) if isinstance(info.config, dict) else None
        named = [str(info.choices.get(stage))] + ([str(v) for v in node.values()] if isinstance(node, dict) else [])
        stage = next((n for n in named if n in settings.studies and n != stage), stage)  # weights.study=bigram
        rest = list(folder.relative_to(info.folder).parts)
    else:
        stage, index = _stage_in_path(parts, info.job_name, settings)
        prefix, rest = parts[:index], parts[index + 1:]
    model = str((info.config.get("model") or {}).get("name") or "") if isinstance(info.config, dict) else ""
    if model in rest:
        rest.remove(model)
    elif not model and rest and not info.config:
        model = rest.pop(0)
    task, method, rest = split_names(rest, model, "", "", settings)
    if stage in settings.model_free:
        model = ""
    swept: list[str] = []
    if info.multirun:
        method, task, swept = _swept(info.overrides, method, task, settings)
    setting = ",".join(["/".join(prefix)] * bool(prefix) + swept + ["/".join(rest)] * bool(rest))
    return RunRecord(
        run_dir=_run_dir(folder, repo),
        study=settings.study_of(stage), stage=stage, model=model, method=method, task=task,
        setting=setting, config_hash=config_hash(info.config),
    )


def _walk(root: Path, excluded: set[Path]):
    """Yield ``(folder, file names)`` below ``root``, skipping hidden and excluded folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and here / d not in excluded)
        yield here, filenames


def _walk_roots(repo: Path, settings: ReportSettings):
    """``(root, folder, filenames)`` for every folder under the existing report roots."""
    excluded = {(repo / e).resolve() for e in settings.exclude}
    for root_name in settings.roots:
        root = (repo / root_name).resolve()
        if root.is_dir():
            for folder, files in _walk(root, excluded):
                yield root, folder, files


def find_runs(repo: str | os.PathLike, settings: ReportSettings) -> list[RunRecord]:
    """Every folder with a ``metrics.json`` under the report roots, identified, sorted by path."""
    repo = Path(repo).resolve()
    records = []
    for root, folder, files in _walk_roots(repo, settings):
        if "metrics.json" not in files or folder == root:
            continue
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a half-written or foreign file: not a finished stage
        if not isinstance(metrics, dict):
            continue
        record = identify(folder, root, repo, settings)
        record.metrics = flatten_metrics(metrics)
        record.mtime = (folder / "metrics.json").stat().st_mtime
        records.append(record)
    return records


def tidy_results(records: list[RunRecord], tasks: list[str] | None = None) -> "Any":
    """One row per (run, numeric metric) with the columns of ``COLUMNS``, deterministically sorted."""
    import pandas as pd

    tasks = list(tasks) if tasks is not None else list(ReportSettings().tasks)
    by_dir = {record.run_dir: record for record in records}
    rows = []
    for record in records:
        for name, value in record.metrics.items():
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)):
                continue  # strings and lists describe a run; they are not results
            head, sep, tail = name.partition("/")
            child = (by_dir.get(f"{record.run_dir}/{head}") or by_dir.get(f"{record.run_dir}/{record.model}-{head}")
                     if sep else None)  # <sub>/ or <model>-<sub>/
            who = record
            if child is not None:  # "<method>/<metric>" summarising the sub-run <method>/metrics.json
                if tail in child.metrics:
                    continue  # read from the sub-run itself
                who, name = child, tail
            task, metric = split_task(name, tasks)
            rows.append({
                "study": who.study, "stage": who.stage, "model": who.model, "method": who.method,
                "task": task or who.task, "setting": who.setting, "metric": metric, "value": float(value),
                "run_dir": record.run_dir, "config_hash": record.config_hash,
            })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame = frame.astype({c: str for c in COLUMNS if c != "value"}).astype({"value": "float64"})
    return frame.sort_values(COLUMNS[:7] + ["run_dir"], kind="stable").reset_index(drop=True)


def find_figures(repo: str | os.PathLike, settings: ReportSettings) -> list[tuple[str, Path]]:
    """Every PNG under the report roots as ``(study, path)``, sorted by path."""
    repo = Path(repo).resolve()
    found = []
    for root, folder, files in _walk_roots(repo, settings):
        pngs = sorted(f for f in files if f.lower().endswith(".png") and not f.startswith("."))
        if pngs and folder != root:
            study = identify(folder, root, repo, settings).study
            found.extend((study, folder / f) for f in pngs)
    return found


def find_named(repo: str | os.PathLike, settings: ReportSettings, name: str) -> list[tuple[RunRecord, Path]]:
    """Every file called ``name`` (``headline.csv``) under the report roots with its run's identity, by path."""
    repo = Path(repo).resolve()
    return [(identify(folder, root, repo, settings), folder / name)
            for root, folder, files in _walk_roots(repo, settings) if name in files and folder != root]
