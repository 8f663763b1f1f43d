"""Every stage on a folder of an architecture it cannot handle fails in seconds naming the model_type.

The folders are tiny random models (tests/architectures.py) passed the way a user passes a local
folder: ``model=hub model.name=<name> model.source=<folder>``, with ``paths.models`` their parent.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_module

STAGE_ARGS = {  # stage: extra overrides that make it reach the architecture check
    "circuits": ["circuits.tasks=[ioi]"],
    "quantize": [],
    "weights": ["weights.study=talking_heads"],
    "attribute": ["attribute.layerwise=true"],
}


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_unsupported_architecture_fails_fast_naming_it(arch_folders, data_root, tmp_path, stage):
    folder = arch_folders["gemma"]
    start = time.perf_counter()
    proc = run_module(f"stages.{stage}", "model=hub", f"model.name={folder.name}", f"model.source={folder}",
                      f"paths.models={folder.parent}", f"paths.data={data_root}", f"hydra.run.dir={tmp_path / 'out'}",
                      "logger=none", *STAGE_ARGS[stage])
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0, proc.stdout[-1000:]
    assert "model_type='gemma'" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert elapsed < 90  # imports, one tiny model load, the refusal
