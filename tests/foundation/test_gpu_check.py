"""The GPU check's own logic, on the CPU: which stages it runs, how it rewrites their commands (nothing
of the CPU pipeline's outputs touched), how it compares quoted numbers, and a rehearsal on the toy."""

from __future__ import annotations

import doctest
import json
import re
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from pipelines import gpu_check  # noqa: E402


def test_doctests():
    assert doctest.testmod(gpu_check).failed == 0


def test_it_checks_every_smollm2_study_stage_and_no_input_stage():
    names = list(gpu_check.stage_commands())
    assert "evaluate@smollm2" in names and "circuits@smollm2" in names and "quantize@smollm2" in names
    assert any(n.startswith("weights@") for n in names) and "attribute@smollm2" in names
    assert not any(n.startswith(("model@", "prepare")) or re.search(r"-(rtn|osplus)-", n) for n in names)


def test_commands_write_only_under_gpu_check():
    for name, cmd in gpu_check.stage_commands().items():
        argv, cpu_dir = gpu_check.device_command(cmd, "cuda", "bfloat16")
        runs = [a for a in argv if a.startswith("hydra.run.dir=")]
        assert runs == [f"hydra.run.dir=outputs/gpu_check/bfloat16/{cpu_dir.removeprefix('outputs/')}"], name
        assert not any(a.startswith("quantize.export=") and a != "quantize.export=[]" for a in argv), name
        assert argv[-3:] == ["device=cuda", "dtype=bfloat16", "logger=none"]


def test_bfloat16_tolerance_is_wider_and_nan_matches_nan():
    cpu, gpu = {"loss": 3.0, "gap": float("nan")}, {"loss": 3.2, "gap": float("nan")}
    assert not gpu_check.largest_deviation(cpu, gpu, *gpu_check.TOLERANCES["float32"])[1]
    assert gpu_check.largest_deviation(cpu, gpu, *gpu_check.TOLERANCES["bfloat16"])[1]
    assert gpu_check.largest_deviation(cpu, {"loss": 3.0}, 1e-3, 1e-4)[2] == ["gap"]  # missing counts as outside


def test_rehearsal_on_the_cpu_compares_with_the_cpu_numbers(data_root, tiny_toy_folder, monkeypatch, tmp_path):
    """The evaluate stage of the toy, run as the check runs a stage, against the same stage's CPU numbers."""
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    (tmp_path / "outputs" / "evaluate").mkdir(parents=True)
    cmd = (f"{sys.executable} -m stages.evaluate model=toy paths.data={data_root} paths.models={tiny_toy_folder.parent} "
           f"hydra.run.dir=outputs/evaluate/toy")
    first = gpu_check.run_stage("evaluate@toy", cmd, "cpu", "float32", 300)  # no CPU numbers yet
    assert first.status == "pass" and "no CPU numbers" in first.deviation
    ran = tmp_path / "outputs" / "gpu_check" / "float32" / "evaluate" / "toy"
    (tmp_path / "outputs" / "evaluate" / "toy").mkdir()
    assert json.loads((ran / "metrics.json").read_text())["ioi/accuracy"] >= 0  # evaluate quotes its metrics.json
    (ran / "headline.json").write_text(json.dumps({"ioi/accuracy": 0.5}))
    (tmp_path / "outputs" / "evaluate" / "toy" / "headline.json").write_text(json.dumps({"ioi/accuracy": 0.75}))
    checked = gpu_check._compare(gpu_check.Check("evaluate@toy", "float32"), tmp_path / "outputs/evaluate/toy", ran,
                                 "float32")
    assert checked.status == "1 outside tol" and checked.detail == ["ioi/accuracy"]
