"""One source of defaults: each settings class built in Python equals the composed YAML default.

A study run from Python (``CircuitSettings()``) and from ``dvc repro`` (``conf/circuits/default.yaml``)
must be the same study, so every value the YAML states must equal the dataclass default.
"""

from __future__ import annotations

import dataclasses

import pytest

from stages import schema
from tests.conftest import compose

GROUPS = ["attribute", "circuits", "quantize", "weights", "report", "data", "logger"]


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("group", GROUPS)
def test_python_defaults_equal_the_composed_yaml(group):
    composed = getattr(schema.validate(compose([])), group)
    built = type(composed)()
    differ = {k: (v, _plain(composed)[k]) for k, v in _plain(built).items() if _plain(composed)[k] != v}
    assert not differ, f"{group}: dataclass default vs conf/{group}/default.yaml: {differ}"


def test_toy_model_defaults_equal_the_yaml():
    from interpipe.settings.models import ToySettings

    assert _plain(schema.validate(compose(["model=toy"])).model.toy) == _plain(ToySettings())
