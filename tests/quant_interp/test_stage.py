"""The quant_interp config group and the stage's refusal of missing inputs."""

from __future__ import annotations

import time

import pytest

from tests.conftest import compose, run_module


def test_config_composes_with_the_four_default_pairs():
    from interpipe.settings.quant_interp import QuantInterpSettings
    from stages import schema

    settings = schema.validate(compose([])).quant_interp
    expected = [("toy", "toy-rtn-w6a6"), ("toy", "toy-osplus-w6a6"), ("smollm2", "smollm2-rtn-w8a8"),
                ("smollm2", "smollm2-osplus-w8a8")]  # SmolLM2 at W8A8: it no longer solves IOI at W6A6
    assert [(p["fp"], p["quantized"]) for p in settings.pairs] == expected
    assert [(p["fp"], p["quantized"]) for p in QuantInterpSettings().pairs] == expected  # the dataclass default agrees
    assert (settings.min_pairwise_accuracy, settings.min_class_heads) == (0.5, 5)


def test_config_rejects_bad_values():
    from stages import schema

    with pytest.raises(ValueError, match="quant_interp.task"):
        schema.validate(compose(["quant_interp.task=sva"]))
    with pytest.raises(ValueError, match="no pair can be solved"):
        schema.validate(compose(["quant_interp.min_pairwise_accuracy=1.0"]))
    with pytest.raises(ValueError, match="min_class_heads"):
        schema.validate(compose(["quant_interp.min_class_heads=1"]))
    with pytest.raises(Exception, match="nope"):
        compose(["quant_interp.nope=1"])


def test_missing_inputs_are_named_with_their_stage(tmp_path):
    from interpipe.quant_interp import Pair, check_inputs
    from interpipe.quant_interp.inputs import Roots

    roots = Roots(tmp_path / "models", tmp_path / "data", tmp_path / "circuits", tmp_path / "attribute")
    (tmp_path / "models" / "toy").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        check_inputs([Pair("toy", "toy-rtn-w6a6")], roots, "ioi", attribution=True)
    message = str(info.value)
    assert f"{tmp_path / 'models' / 'toy-rtn-w6a6'} is missing" in message
    assert "dvc repro quantize@toy" in message  # the quantized folder: the FP model's quantize stage exports it
    assert "circuits@toy-rtn-w6a6" in message and "attribute@toy" in message
    assert f"{tmp_path / 'models' / 'toy'} is missing" not in message


def test_stage_refuses_a_missing_folder_before_loading(tmp_path):
    start = time.perf_counter()
    result = run_module("stages.quant_interp", "logger=none", f"paths.models={tmp_path / 'models'}",
                        f"quant_interp.circuits_root={tmp_path / 'circuits'}",
                        f"quant_interp.attribute_root={tmp_path / 'attribute'}",
                        f"hydra.run.dir={tmp_path / 'out'}", timeout=120)
    assert result.returncode != 0
    assert f"{tmp_path / 'models' / 'toy'} is missing" in result.stderr and "circuits@smollm2" in result.stderr
    assert "Loading weights" not in result.stderr  # no model was loaded
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert time.perf_counter() - start < 120
