"""Every config group composes; mistakes fail at composition or validation, before any load."""

from __future__ import annotations

import time

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from stages import schema
from tests.conftest import ROOT, compose, run_module


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("model", _group_options("model"))
def test_every_model_config_composes(model):
    overrides = [f"model={model}"]
    if model == "hub":
        overrides += ["model.name=x", "model.source=org/x"]
    cfg = compose(overrides)
    obj = schema.validate(cfg)
    assert obj.model.name == cfg.model.name


@pytest.mark.parametrize("experiment", _group_options("experiment"))
def test_every_experiment_preset_composes(experiment):
    schema.validate(compose([f"experiment={experiment}"]))


def test_unknown_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException, match="lr_typo"):
        compose(["model.toy.lr_typo=1"])


def test_wrong_type_fails_naming_key():
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException), match="steps"):
        compose(["model.toy.steps=many"])


def test_unknown_choice_lists_options():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model=nonexistent"])
    assert "toy" in str(err.value) and "minilm" in str(err.value)


@pytest.mark.parametrize("override,needle", [
    ("device=tpu", "device='tpu'"),
    ("dtype=float8", "dtype='float8'"),
    ("model.kind=regressor", "model.kind='regressor'"),
    ("logger.mode=sometimes", "logger.mode='sometimes'"),
])
def test_out_of_range_values_fail_validation(override, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        schema.validate(compose([override]))


def test_bad_config_fails_before_model_loads(tmp_path):
    """The model stage exits with the message in seconds and writes no output."""
    out = tmp_path / "out"
    start = time.perf_counter()
    proc = run_module("stages.model", "model=minilm", "dtype=float8", f"hydra.run.dir={out}", "logger=none")
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0
    assert "config error" in proc.stderr and "float8" in proc.stderr
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    assert elapsed < 60  # imports only: no model was loaded
