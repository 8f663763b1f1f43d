"""The report group, the launchers and every sweep preset compose (presets: every sweep point)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from interpipe.report import ReportSettings
from tests.conftest import ROOT, compose

PRESETS = sorted({*ROOT.glob("conf/experiment/sweep_*.yaml"), *ROOT.glob("conf/experiment/*_sweep.yaml")})


def _compose_hydra(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from stages import schema

    schema.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, "paths.out=x"], return_hydra_config=True)


def test_report_group_validates():
    from stages import schema

    settings = schema.validate(compose())
    assert isinstance(settings.report, ReportSettings)
    assert settings.report.roots == ["outputs", "multirun"]
    with pytest.raises(ValueError, match="report.figure_width_px"):
        schema.validate(compose(["report.figure_width_px=10"]))


@pytest.mark.parametrize("launcher, target", [
    ("local", "JoblibLauncher"), ("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher")])
def test_launchers_compose(launcher, target):
    cfg = _compose_hydra([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)


def _groups(preset: Path) -> set[str]:
    """Config groups a preset depends on: its `override /group` defaults and swept `group.key`s."""
    spec = yaml.safe_load(preset.read_text()) or {}
    groups = set()
    for entry in spec.get("defaults") or []:
        if isinstance(entry, dict):
            for key in entry:
                name = key.replace("override", "").strip().lstrip("/")
                if not name.startswith("hydra"):
                    groups.add(name.split("/")[0])
    params = ((spec.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    groups |= {key.split(".")[0] for key in params if "." in key}
    groups |= {key for key in spec if key not in ("defaults", "hydra") and isinstance(spec[key], dict)}
    return groups


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_sweep_preset_composes_at_every_point(preset):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from stages import schema

    missing = sorted(g for g in _groups(preset) if not (ROOT / "conf" / g).is_dir())
    if missing:
        pytest.skip(f"{preset.name} needs config groups that do not exist yet: {missing}")
    schema.register()
    parser = OverridesParser.create()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        base = [f"experiment={preset.stem}", "paths.out=x"]
        params = dict(hydra_compose("config", overrides=base, return_hydra_config=True).hydra.sweeper.params or {})
        assert params, f"{preset.name} sweeps nothing (hydra.sweeper.params is empty)"
        for key, values in params.items():
            for value in parser.parse_override(f"{key}={values}").sweep_string_iterator():
                schema.validate(hydra_compose("config", overrides=[*base, f"{key}={value}"]))  # schema accepts it
