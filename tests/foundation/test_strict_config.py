"""Presets apply, and every route to an unknown key or a bad choice is refused before any load."""

from __future__ import annotations

import time

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from stages import schema
from tests.conftest import ROOT, compose, run_module

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def _leaves(node, path=()):
    """``(key path, value)`` of every leaf (a sweeper's params keys contain dots: paths are tuples)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, node


def _compose_with_hydra(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    schema.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, "paths.out=outputs/test-compose"],
                             return_hydra_config=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_value_a_preset_sets_is_the_value_the_job_sees(preset):
    own = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "experiment" / f"{preset}.yaml"), resolve=False)
    includes = own.pop("defaults", None)
    cfg = _compose_with_hydra([f"experiment={preset}"])
    composed = OmegaConf.to_container(cfg, resolve=False)
    checked = 0
    for key, value in _leaves(own):
        seen = composed
        for part in key:
            seen = seen[part]
        assert seen == value, f"{preset}: {'.'.join(key)} is {seen!r} in the composed job, the preset sets {value!r}"
        checked += 1
    assert checked > 0 or includes  # a preset of includes only is checked through them


BAD_OVERRIDES = [  # (override, text the error must contain)
    ("+nonexistent_key=1", "nonexistent_key"),
    ("++nonexistent_key=1", "nonexistent_key"),
    ("++model.nonexistent_key=1", "model.nonexistent_key"),
    ("+model.nonexistent_key=1", "model.nonexistent_key"),
    ("+attribute.ig_stepz=50", "attribute.ig_steps"),
    ("++attribute.ig_stepz=50", "attribute.ig_stepz"),
    ("+circuits.n_prompt=4", "circuits.n_prompts"),
    ("+quantize.bitz=[w8a8]", "quantize.bitz"),
    ("+weights.studdy=bigram", "weights.study"),
    ("+model.toy.n_layr=3", "model.toy.n_layer"),
    ("+data.n_tset=3", "data.n_test"),
    ("+logger.moed=offline", "logger.mode"),
    ("+paths.dta=x", "paths.data"),
    ("+report.studyy=x", "report.studyy"),
    ("+model.finetune.stepz=3", "stepz"),
    ("model.toy.lr_typo=1", "lr_typo"),
    ("attribute.ig_stepz=5", "ig_stepz"),
    ("device=tpu", "device='tpu'"),
    ("dtype=float8", "dtype='float8'"),
    ("model.kind=regressor", "model.kind='regressor'"),
    ("attribute.methods=[normxlogitt]", "normxlogitt"),
    ("attribute.ig_method=simpson", "simpson"),
    ("model=nonexistent", "nonexistent"),
    ("logger.mode=sometimes", "sometimes"),
    ("circuits.tasks=[nope]", "nope"),
    ("circuits.overlap=[ioi,nope]", "nope"),
    ("circuits.edge_methods=[eap-igg]", "eap-igg"),
    ("circuits.edge_budgets=[0.5,0.1]", "circuits.edge_budgets"),
    ("circuits.edge_budgets=[0.1,1.0]", "circuits.edge_budgets"),
    ("circuits.edge_ig_steps=0", "circuits.edge_ig_steps"),
    ("circuits.edge_tasks=[nope]", "nope"),
    ("attribute.causal_tasks=[nope]", "nope"),
    ("quantize.calib_source=nope", "nope"),
    ("weights.lnfree.tasks=[nope]", "nope"),
]


@pytest.mark.parametrize("override,needle", BAD_OVERRIDES)
def test_bad_override_is_refused_naming_the_key(override, needle):
    with pytest.raises((ValueError, ConfigCompositionException)) as err:
        schema.validate(compose([override]))
    assert needle in str(err.value) or needle in str(err.value.__cause__), str(err.value)


@pytest.mark.parametrize("override,needle", [("circuits.tasks=[nope]", "nope"),
                                             ("+nonexistent_key=1", "nonexistent_key"),
                                             ("++model.nonexistent_key=1", "model.nonexistent_key"),
                                             ("+attribute.ig_stepz=50", "attribute.ig_steps")])
def test_stage_exits_in_seconds_before_any_load(tmp_path, override, needle):
    start = time.perf_counter()
    proc = run_module("stages.evaluate", "model=toy", override, f"hydra.run.dir={tmp_path / 'out'}", "logger=none")
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and not (tmp_path / "out" / "metrics.json").exists()
    assert time.perf_counter() - start < 60  # imports only
