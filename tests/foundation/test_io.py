"""Atomic writes leave nothing half-written."""

from __future__ import annotations

import math

import pytest

from interpipe.io import OutputExistsError, atomic_dir, read_json, write_json


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_previous_output_only_on_success(tmp_path):
    target = tmp_path / "result"
    with atomic_dir(target) as tmp:
        (tmp / "v.txt").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "v.txt").write_text("2")
            raise KeyboardInterrupt
    assert (target / "v.txt").read_text() == "1"
    with pytest.raises(OutputExistsError):
        with atomic_dir(target, overwrite=False):
            pass


def test_write_json_refuses_nan_and_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"a\.b=nan"):
        write_json(tmp_path / "m.json", {"a": {"b": math.nan}, "c": 1.0})
    assert not (tmp_path / "m.json").exists()
    write_json(tmp_path / "m.json", {"c": 1.0})
    assert read_json(tmp_path / "m.json") == {"c": 1.0}
