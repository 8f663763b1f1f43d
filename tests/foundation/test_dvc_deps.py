"""Stage deps are complete by construction: every file a stage imports and every conf file it
composes is a dep or a param of that stage in ``dvc.yaml``, so no change leaves a stage cached stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.foundation.import_closure import ROOT, import_closure

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _expand(text: str, key: str, item) -> str:
    text = text.replace("${key}", key)
    if isinstance(item, dict):
        for k, v in item.items():
            text = text.replace(f"${{item.{k}}}", str(v))
        return text
    return text.replace("${item}", str(item))


def _bodies():
    """``(name, body)`` of every stage, ``foreach`` expanded as DVC does (``name@key``)."""
    for name, stage in STAGES.items():
        if "foreach" not in stage:
            yield name, stage
            continue
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((str(i), i) for i in items)
        for key, item in pairs:
            body = stage["do"]
            yield f"{name}@{key}", {
                "cmd": _expand(body["cmd"], key, item),
                "deps": [_expand(str(d), key, item) for d in body.get("deps", [])],
                "params": [_expand(n, key, item) for n in _names(body.get("params"))],
            }


def _names(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def uncovered(files: set[Path], deps: list[str]) -> list[str]:
    """Files not equal to or inside any dep path.

    >>> uncovered({Path("interpipe/a.py"), Path("interpipe/b/c.py")}, ["interpipe/b"])
    ['interpipe/a.py']
    """
    out = []
    for f in sorted(files):
        if not any(str(f) == d or str(f).startswith(d.rstrip("/") + "/") for d in deps):
            out.append(str(f))
    return out


@pytest.mark.parametrize("name", [n for n, _ in _bodies()])
def test_every_imported_file_is_a_dep(name):
    body = dict(_bodies())[name]
    module = re.search(r"python -m stages\.(\w+)", body["cmd"]).group(1)
    missing = uncovered(import_closure(ROOT / "stages" / f"{module}.py"), _names(body.get("deps")))
    assert not missing, f"dvc.yaml stage {name!r} runs {missing} but does not list them as deps"


@pytest.mark.parametrize("name", [n for n, _ in _bodies()])
def test_every_composed_conf_file_is_a_param(name):
    body = dict(_bodies())[name]
    tracked = _names(body.get("params")) + _names(body.get("deps"))
    assert "conf/config.yaml" in tracked, f"{name}: the root config is composed by every stage"
    for group, option in re.findall(r"\b(model|attribute|circuits|quantize|weights|data|report)=(\S+)", body["cmd"]):
        if "." in group:
            continue
        path = f"conf/{group}/{option}.yaml"
        assert path in tracked, f"{name}: its cmd selects {group}={option} but {path} is not a param"
        if option != "default" and "default" in (ROOT / path).read_text().split("defaults:")[-1].split("\n\n")[0]:
            assert f"conf/{group}/default.yaml" in tracked, f"{name}: {path} extends conf/{group}/default.yaml"


def test_new_module_imported_by_a_stage_would_be_caught(tmp_path):
    """The closure follows imports inside functions too (how the library defers heavy ones)."""
    closure = import_closure(ROOT / "stages" / "attribute.py")
    assert Path("interpipe/attribution/methods.py") in closure  # imported by the package __init__
    assert Path("interpipe/models/arch.py") in closure  # imported inside a function of attribution/model.py
    assert Path("interpipe/quant/study.py") not in closure
