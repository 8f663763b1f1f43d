"""The one-GPU paper tier (``pipelines/gpu/dvc.yaml``), checked on the CPU: every stage command composes and
validates (device set to cpu), names presets that exist, tracks what it runs, writes only under
``outputs/gpu/``, and its presets meet the GPU tier's sizes (32 + 32 circuit prompts on every task, IG on
every attribution example, 128 calibration texts over 5 seeds, the official bigram schedule, wall-clock
checkpoints for LN removal); a rehearsal runs the circuits command on a tiny toy model."""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from stages import schema
from tests.conftest import ROOT, compose, run_module
from tests.foundation.import_closure import import_closure
from tests.foundation.test_dvc_deps import uncovered

PIPELINE = "pipelines/gpu/dvc.yaml"
OUT = "outputs/gpu/"
DATA = "outputs/gpu/data"
MODEL = "outputs/models/smollm2"
GROUPS = ("model", "data", "attribute", "circuits", "quantize", "weights", "experiment")


@lru_cache(maxsize=None)
def _stages(path: str = PIPELINE) -> tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]:
    """``(name, cmd, deps, params files, outs)`` of every stage of ``path`` as DVC renders it (vars, foreach)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = repo.stage.load_file(path)
        return tuple((s.addressing.split(":", 1)[-1], " ".join(str(s.cmd).split()),
                      tuple(str(d.def_path) for d in s.deps), tuple(sorted({str(p.def_path) for p in s.params})),
                      tuple(str(o.def_path) for o in s.outs)) for s in stages)


def _stage(name: str):
    return next(s for s in _stages() if s[0] == name)


NAMES = [s[0] for s in _stages()]
STUDIES = [n for n in NAMES if n != "prepare"]


def _argv(cmd: str) -> list[str]:
    """The Hydra overrides of a stage command (after ``pipelines/python -m stages.<name>``)."""
    words = shlex.split(cmd)
    assert words[:2] == ["pipelines/python", "-m"] and words[2].startswith("stages."), cmd
    return words[3:]


def _cpu_config(cmd: str, *extra: str):
    """The command's config composed as the stage composes it, with ``device=cpu``; validated."""
    argv = _argv(cmd)
    run_dir = next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1]
    overrides = [a for a in argv if not a.startswith(("hydra.run.dir=", "device="))]
    cfg = compose([*overrides, "device=cpu", f"paths.out={run_dir}", *extra])
    return cfg, schema.validate(cfg)


def _choices(cmd: str) -> list[tuple[str, str]]:
    """``(group, option)`` of every config group a stage command selects (``circuits=smollm2_gpu``)."""
    return [tuple(a.split("=", 1)) for a in _argv(cmd) if a.split("=", 1)[0] in GROUPS]


def _prepared_n_test() -> int:
    return int(next(a for a in _argv(_stage("prepare")[1]) if a.startswith("data.n_test=")).split("=", 1)[1])


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_composes_and_validates_on_the_cpu(name):
    _, cmd, *_ = _stage(name)
    cfg, settings = _cpu_config(cmd)
    assert settings.device == "cpu" and settings.dtype == "float32"
    if name != "prepare":
        assert "device=cuda" in _argv(cmd), f"{name}: the GPU tier runs on CUDA"
        assert settings.model.name == "smollm2" and settings.paths.data == DATA, name


@pytest.mark.parametrize("name", NAMES)
def test_every_named_preset_exists_and_is_a_param(name):
    _, cmd, _, params, _ = _stage(name)
    for group, option in _choices(cmd):
        path = ROOT / "conf" / group / f"{option}.yaml"
        assert path.exists(), f"{name}: {group}={option} names {path.relative_to(ROOT)}, which does not exist"
        assert str(path.relative_to(ROOT)) in params, f"{name}: {path.relative_to(ROOT)} is not a param"
        if group in ("circuits", "attribute", "experiment"):
            assert option.endswith("_gpu") or option == "default", f"{name}: {group}={option} is not a *_gpu preset"
    assert "conf/config.yaml" in params
    for path in params:
        assert (ROOT / path).exists(), f"{name}: param file {path} does not exist"


def _extends(path: Path) -> list[str]:
    """Conf files ``path`` composes through its defaults list (same group, and an experiment's overrides)."""
    found = []
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, str) and entry not in ("_self_", "schema"):
            found.append(path.parent / f"{entry}.yaml")
        elif isinstance(entry, dict):
            for key, option in entry.items():
                group = key.removeprefix("override ").strip("/ ")
                if group in GROUPS and option is not None:
                    found.append(ROOT / "conf" / group / f"{option}.yaml")
    return found + [f for p in found if p.exists() for f in _extends(p)]


@pytest.mark.parametrize("name", NAMES)
def test_every_composed_conf_file_is_tracked(name):
    """A change to any preset a stage composes (the ones its presets extend included) reruns the stage."""
    _, cmd, _, params, _ = _stage(name)
    for group, option in _choices(cmd):
        for path in _extends(ROOT / "conf" / group / f"{option}.yaml"):
            rel = str(path.relative_to(ROOT))
            assert rel in params, f"{name}: composes {rel}, which is not a param"


@pytest.mark.parametrize("name", NAMES)
def test_every_imported_file_and_input_is_a_dep(name):
    _, cmd, deps, _, _ = _stage(name)
    module = re.search(r"python -m stages\.(\w+)", cmd).group(1)
    missing = uncovered(import_closure(ROOT / "stages" / f"{module}.py"), list(deps))
    assert not missing, f"{PIPELINE} stage {name!r} runs {missing} but does not list them as deps"
    if name != "prepare":
        assert DATA in deps and MODEL in deps, f"{name}: the prepared data and the SmolLM2 folder are its inputs"


def _all_outs() -> dict[str, list[str]]:
    """Every out of every pipeline of the repository, by pipeline file."""
    files = ["dvc.yaml", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("pipelines/*/dvc.yaml"))]
    return {f: [o for s in _stages(f) for o in s[4]] for f in files}


def test_outs_live_under_outputs_gpu_and_overlap_no_other_pipeline():
    outs = _all_outs()
    mine = outs.pop(PIPELINE)
    assert mine and all(o.startswith(OUT) for o in mine), mine
    inside = lambda a, b: a == b or a.startswith(b.rstrip("/") + "/")  # noqa: E731
    for other_file, others in outs.items():
        clash = [(a, b) for a in mine for b in others if inside(a, b) or inside(b, a)]
        assert not clash, f"{PIPELINE} outs overlap {other_file}'s: {clash}"
    assert not any(inside(a, b) for a in mine for b in mine if a != b)
    assert not any(o.startswith("outputs/gpu_check") for o in mine)  # the GPU check's folder (not a DVC out)


@pytest.mark.parametrize("name", NAMES)
def test_each_stage_writes_inside_its_outs(name):
    _, cmd, _, _, outs = _stage(name)
    run_dir = next(a for a in _argv(cmd) if a.startswith("hydra.run.dir=")).split("=", 1)[1]
    assert run_dir in outs, f"{name}: hydra.run.dir={run_dir} is not one of its outs {outs}"


def test_metrics_are_headlines_inside_the_outs():
    spec = yaml.safe_load((ROOT / PIPELINE).read_text())
    outs = [o for s in _stages() for o in s[4]]
    metrics = [str((ROOT / "pipelines/gpu" / m).resolve().relative_to(ROOT)) for m in spec["metrics"]]
    assert len(metrics) == len(STUDIES)
    for m in metrics:
        assert m.endswith("headline.json") and any(m.startswith(o + "/") for o in outs), m


def _config(name: str):
    return _cpu_config(_stage(name)[1])[1]


def test_circuits_prompts_per_task_and_exact_grids():
    s = _config("circuits").circuits
    n_test = _prepared_n_test()
    assert sorted(s.tasks) == sorted(["ioi", "colored_objects", "laundry_list", "sva", "induction"])
    for task in s.tasks:
        t = s.for_task(task)
        assert t.prompts_for(task) >= 64, f"{task}: fewer than 32 + 32 prompts"
        assert t.prompts_for(task) + s.reference_prompts <= n_test, f"{task}: needs more than data.n_test={n_test}"
        assert {"resid_pre", "z", "q", "k", "v", "pattern"} <= set(t.grids), f"{task}: exact grids {t.grids}"
    assert s.rank_with == "exact"


def test_circuits_keep_32_plus_32_prompts_after_smollm2_skips(tmp_path):
    """Prompts whose clean and corrupted versions tokenize to different lengths are skipped (induction loses
    ~40 % to SmolLM2's BPE): every task still has 32 + 32 on the GPU pipeline's data."""
    if not (ROOT / MODEL / "tokenizer.json").exists():
        pytest.skip(f"no {MODEL} (built by `dvc repro model@smollm2`)")
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer

    from interpipe.circuits.bridge import _mismatch
    from interpipe.data import PrepareSettings, load_task, prepare_all

    prepare_all(tmp_path, PrepareSettings(n_test=_prepared_n_test()))
    s = _config("circuits").circuits
    tok = AutoTokenizer.from_pretrained(ROOT / MODEL)
    bridge = SimpleNamespace(tokenizer=tok)
    for task in s.tasks:
        rows = load_task(tmp_path, task, s.split).select(range(s.prompts_for(task)))
        ids = lambda text: torch.tensor(tok(text)["input_ids"])  # noqa: E731
        kept = sum(_mismatch(bridge, i, r["prompt"], ids(r["prompt"]), ids(r["corrupted_prompt"]), r["answer"],
                             r["foil"]) is None for i, r in enumerate(rows))
        assert kept >= 64, f"{task}: {kept} of {len(rows)} prompts kept, fewer than 32 + 32"


def test_attribution_runs_every_method_on_every_example():
    s = _config("attribute").attribute
    assert s.ig_n_examples == 0 and "integrated_gradients" in s.methods
    assert s.n_examples >= _prepared_n_test() * len(s.causal_tasks)  # every prepared IOI and SVA prompt
    assert s.ig_steps >= 50 and len(s.ratios) == 9  # the paper's 50 Gauss-Legendre steps and nine ratios


def test_quantization_calibration_and_seeds():
    s = _config("quantize").quantize
    assert s.calib_samples >= 128 and len(set(s.calib_seeds)) >= 5 and s.spread_bits == []
    assert s.eval_samples >= 256 and _prepared_n_test() >= 256  # 256 held-out prompts per task
    assert s.export == []  # nothing written into the default pipeline's model folders


def test_talking_heads_wide_search():
    s = _config("weights@talking_heads").weights
    assert s.study == "talking_heads"
    t = s.talking_heads
    assert t.max_senders == 0 and t.inhibition_components >= 2 and t.edit_candidates >= 8
    assert t.n_select >= 256 and t.n_test_per_length >= 128 and max(t.test_lengths) >= 10


def test_bigram_official_schedule():
    s = _config("weights@bigram").weights
    b = s.bigram
    assert s.study == "bigram"
    assert (b.steps, b.batch_size, b.lr, b.temperature_growth, b.undecided_stop, b.weight_decay, b.prune_minimum) == (
        15000, 32, 5e-5, 1.001, 0.01, 0.01, 2)
    assert 0 < b.checkpoint_minutes <= 5  # by wall time, a few per run


def test_lnfree_uses_the_gpu_preset_with_wall_clock_checkpoints():
    s = _config("weights@lnfree").weights
    assert s.study == "lnfree"
    assert s.lnfree.checkpoint_minutes > 0  # the schedule itself is conf/weights/smollm2_gpu.yaml's
    assert "weights=smollm2_gpu" in _argv(_stage("weights@lnfree")[1])


NEW_PRESETS = ["conf/circuits/smollm2_gpu.yaml", "conf/attribute/smollm2_gpu.yaml",
               "conf/experiment/talking_heads_smollm2_gpu.yaml", "conf/experiment/bigram_smollm2_gpu.yaml"]


@pytest.mark.parametrize("path", NEW_PRESETS)
def test_preset_headers_say_the_command_and_no_invented_timing(path):
    header = "\n".join(line for line in (ROOT / path).read_text().splitlines() if line.startswith("#"))
    assert "python -m stages." in header and "device=cuda" in header, path
    assert "GPU time not yet measured" in header, path
    assert "Shows:" in header, path


# (GPU preset, the overrides of its CPU counterpart, the config group compared)
COUNTERPARTS = [
    ("conf/circuits/smollm2_gpu.yaml", ["model=smollm2", "circuits=smollm2"], "circuits", ["circuits=smollm2_gpu"]),
    ("conf/attribute/smollm2_gpu.yaml", ["model=smollm2", "attribute=smollm2"], "attribute", ["attribute=smollm2_gpu"]),
    ("conf/experiment/talking_heads_smollm2_gpu.yaml", ["model=smollm2", "weights=smollm2"], "weights",
     ["experiment=talking_heads_smollm2_gpu"]),
    ("conf/experiment/bigram_smollm2_gpu.yaml", ["model=smollm2", "weights=smollm2"], "weights",
     ["experiment=bigram_smollm2_gpu"]),
]


def _leaves(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize(("path", "cpu", "group", "gpu"), COUNTERPARTS, ids=[c[0] for c in COUNTERPARTS])
def test_every_setting_that_differs_from_the_cpu_preset_is_commented(path, cpu, group, gpu):
    from omegaconf import OmegaConf

    a = _leaves(OmegaConf.to_container(compose(cpu)[group]))
    b = _leaves(OmegaConf.to_container(compose(gpu)[group]))
    lines = (ROOT / path).read_text().splitlines()
    changed = sorted(k for k in {*a, *b} if a.get(k, "absent") != b.get(k, "absent") and k != "study")
    assert changed, path
    for key in changed:  # the line setting the key, or the mapping that holds it (task_prompts: {induction: 128})
        names = key.split(".")[::-1]
        at = next(([i for i, line in enumerate(lines) if re.match(rf"\s*{re.escape(n)}:", line)] for n in names
                   if any(re.match(rf"\s*{re.escape(n)}:", line) for line in lines)), [])
        assert at, f"{path}: {key} differs from the CPU preset but is not set here"
        i = at[-1]
        assert "#" in lines[i] or lines[i - 1].lstrip().startswith("#"), f"{path}: {key} differs without a comment"


def test_docs_table_names_every_preset():
    text = (ROOT / "docs" / "gpu.md").read_text()
    section = text.split("## Paper-scale pipeline on one GPU", 1)[1]
    for preset in ["circuits=smollm2_gpu", "attribute=smollm2_gpu", "experiment=talking_heads_smollm2_gpu",
                   "experiment=bigram_smollm2_gpu", "weights=smollm2_gpu", "quantize=smollm2_gpu"]:
        assert preset in section, preset
    assert "not measured yet" in section


def test_rehearsal_of_the_circuits_command_on_a_tiny_toy(data_root, tiny_toy_folder, tmp_path):
    """The GPU pipeline's circuits command, with the device, model, data and sizes shrunk by overrides, runs
    end to end on the CPU (every task, every exact grid, edges)."""
    argv = [a for a in _argv(_stage("circuits")[1]) if not a.startswith(("model=", "device=", "paths.data=", "hydra.run.dir="))]
    out = tmp_path / "circuits"
    done = run_module("stages.circuits", *argv, "model=toy", "device=cpu", f"paths.data={data_root}",
                      f"paths.models={tiny_toy_folder.parent}", "circuits.n_prompts=8", "circuits.task_prompts.induction=8",
                      "circuits.reference_prompts=0", "circuits.curve_points=3", "circuits.random_circuits=2",
                      "circuits.edge_prompts=2", "circuits.edge_random_seeds=1", "circuits.memory_mb=64",
                      "circuits.progress=false", "logger=none", f"hydra.run.dir={out}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "metrics.json").exists()
    assert sorted(p.name for p in out.iterdir() if (p / "metrics.json").exists()) == sorted(
        f"toy-{task}" for task in ["ioi", "colored_objects", "laundry_list", "sva", "induction"])
