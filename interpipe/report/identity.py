"""What a study's sub-run folder is (task, method, setting), read from the files its result wrote.

A stage execution's ``run.json`` says what ran (stage, model, method, sweep overrides); some studies
then write one sub-run folder per method, task or setting below it, and each of those folders
describes itself in its own files:

- an attribution method (:class:`~interpipe.attribution.result.Attribution`): ``attribution.json``
  with ``method``;
- a circuits task (:func:`interpipe.circuits.study.analyse_task`): ``info.json`` with ``task`` and
  ``model_name``;
- a quantization setting (:class:`~interpipe.quant.results.SettingResult`): ``info.json`` with
  ``name``, ``method``, ``bits`` and ``granularity``; its setting is ``<bits>-<granularity>``.

:func:`sub_run_identity` reads each folder between the execution and the sub-run that way. Only a
folder that describes itself in none of these files (written before results carried their
``info``, or a plain subfolder such as ``outliers/``) is read off its name instead, by the study's
folder layout (:func:`name_parts`): ``<method>/``, ``<model>-<task>/``,
``<model>-<method>-<bits>-<protocol>/``.

>>> import tempfile, json, pathlib
>>> home = pathlib.Path(tempfile.mkdtemp())
>>> (home / "x").mkdir()
>>> _ = (home / "x" / "info.json").write_text(json.dumps(
...     {"name": "toy-rtn-w8a8-paper", "method": "rtn", "bits": "w8a8", "granularity": "paper"}))
>>> sub_run_identity(home / "x", home, "toy", "", ReportSettings())
('', 'rtn', ['w8a8-paper'])
>>> (home / "toy-ioi").mkdir()
>>> sub_run_identity(home / "toy-ioi", home, "toy", "", ReportSettings())  # no file: read off the name
('ioi', '', [])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from interpipe.settings.report import ReportSettings


@dataclass
class SubRun:
    """What one sub-run folder says it is in its own files (empty strings where it says nothing)."""

    task: str = ""
    method: str = ""
    setting: list[str] = field(default_factory=list)  # setting parts, in path order


def _read_dict(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is absent, unreadable or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text(value) -> bool:
    return isinstance(value, str) and bool(value)


def describe_sub_run(folder: Path) -> SubRun | None:
    """What ``folder`` says it is: an attribution method, a circuits task or a quantization setting.

    None when it holds none of those files (the caller falls back to the folder's name).
    """
    attribution = _read_dict(folder / "attribution.json")
    if attribution is not None and _text(attribution.get("method")):
        return SubRun(method=attribution["method"])
    info = _read_dict(folder / "info.json")
    if info is None:
        return None
    if _text(info.get("task")) and "model_name" in info:
        return SubRun(task=info["task"])
    if all(_text(info.get(k)) for k in ("name", "method", "bits", "granularity")):
        return SubRun(method=info["method"], setting=[f"{info['bits']}-{info['granularity']}"])
    return None


def name_parts(part: str, model: str) -> list[str]:
    """The words of a sub-run folder's name: a ``<model>-`` prefix split off, then one more ``-``.

    >>> name_parts("toy-rtn-w8a8-paper", "toy"), name_parts("toy-ioi", "toy"), name_parts("saliency", "toy")
    (['rtn', 'w8a8-paper'], ['ioi'], ['saliency'])
    """
    return part[len(model) + 1:].split("-", 1) if model and part.startswith(model + "-") else [part]


def _take_task_and_method(words: list[str], task: str, method: str,
                          settings: ReportSettings) -> tuple[str, str, set[int]]:
    """Fill an unknown ``task`` with the first word of ``words`` that names a known task, then an
    unknown ``method`` with the first other word; also the indices of the words so taken."""
    taken: set[int] = set()
    if not task:
        found = next((i for i, w in enumerate(words) if w in settings.tasks), None)
        if found is not None:
            task = words[found]
            taken.add(found)
    if not method:
        first = next((i for i in range(len(words)) if i not in taken), None)
        if first is not None:
            method = words[first]
            taken.add(first)
    return task, method, taken


def split_names(parts: list[str], model: str, task: str, method: str,
                settings: ReportSettings) -> tuple[str, str, list[str]]:
    """``(task, method, rest)`` read off folder names alone (the fallback for folders that do not
    describe themselves): the first word that names a known task is the task (unless ``task`` is
    given), the first other word the method (unless ``method`` is given), the rest the setting."""
    words = [q for p in parts for q in name_parts(p, model)]
    task, method, taken = _take_task_and_method(words, task, method, settings)
    return task, method, [w for i, w in enumerate(words) if i not in taken]


def sub_run_identity(folder: Path, home: Path, model: str, method: str,
                     settings: ReportSettings) -> tuple[str, str, list[str]]:
    """``(task, method, setting parts)`` of ``folder``, a sub-run folder below the execution ``home``.

    Every folder from ``home`` down to ``folder`` adds what it says of itself
    (:func:`describe_sub_run`). The words of the names of those that say nothing are read as
    :func:`split_names` reads them, and only fill a task or method still unknown; ``method`` (the
    run record's) wins over both. The setting parts keep their path order.
    """
    parts = list(folder.relative_to(home).parts)
    task, own_method = "", ""
    words: list[tuple[str, bool]] = []  # (word, read off a folder name)
    for i, part in enumerate(parts):
        own = describe_sub_run(home.joinpath(*parts[:i + 1]))
        if own is None:
            words += [(w, True) for w in name_parts(part, model)]
        else:
            task, own_method = task or own.task, own_method or own.method
            words += [(w, False) for w in own.setting]
    named = [i for i, (_, from_name) in enumerate(words) if from_name]
    task, method, taken = _take_task_and_method([words[i][0] for i in named], task, method or own_method, settings)
    taken_words = {named[j] for j in taken}
    return task, method, [w for i, (w, _) in enumerate(words) if i not in taken_words]


__all__ = ["SubRun", "describe_sub_run", "name_parts", "split_names", "sub_run_identity"]
