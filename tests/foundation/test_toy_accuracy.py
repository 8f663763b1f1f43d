"""The default toy model solves the embedded tasks (the issue's accuracy bar), trained from scratch
through the real stages with the default config. About four minutes on 2 CPU cores:

    pytest -m slow tests/foundation/test_toy_accuracy.py
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_module

# Upper bounds of chance: a random pick among the words the prompt offers, at its shortest
# (3 listed colours; an induction sequence of 3 words; a Laundry List of 2 items)
CHANCE = {"colored_objects": 1 / 3, "induction": 1 / 3, "laundry_list": 1 / 2}


@pytest.mark.slow
def test_default_toy_meets_the_accuracy_bar(tmp_path):
    paths = [f"paths.data={tmp_path}/data", f"paths.models={tmp_path}/models", "logger=none"]
    for module, args in [("stages.prepare", [f"hydra.run.dir={tmp_path}/data"]),
                         ("stages.model", ["model=toy", f"hydra.run.dir={tmp_path}/models/toy"]),
                         ("stages.evaluate", ["model=toy", f"hydra.run.dir={tmp_path}/evaluate"])]:
        proc = run_module(module, *args, *paths, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["ioi/accuracy"] >= 0.9 and metrics["sva/accuracy"] >= 0.9, metrics
    for task, chance in CHANCE.items():
        assert metrics[f"{task}/accuracy"] >= 1.5 * chance, (task, metrics[f"{task}/accuracy"])
