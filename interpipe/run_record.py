"""The run record: what one stage execution was, written as ``run.json`` beside its ``metrics.json``.

It says what ran (stage, study, model and its origin, tasks, method, seed, the resolved-config hash),
on what (git revision and whether tracked source files differed from it, ``dvc.lock`` aside, library versions, device, dtype) and what it
cost (wall seconds of the whole process including imports, CPU seconds, peak resident memory).
``stage_seconds`` in ``metrics.json`` counts the library call alone; ``wall_seconds`` here counts the
process from its start, which is what a pipeline run waits for.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

from interpipe.runtime import changed_source_files, git_revision

LIBRARIES = ("torch", "transformers", "transformer-lens", "interpipe")
MAX_CHANGED_SHOWN = 20  # changed source files listed in run.json (git_dirty counts them all)


def config_hash(config: dict) -> str:
    """A short, stable hash of a resolved config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def process_seconds() -> tuple[float, float]:
    """(wall seconds since this process started, CPU seconds it used, children included)."""
    import psutil

    proc = psutil.Process()
    cpu = proc.cpu_times()
    return time.time() - proc.create_time(), cpu.user + cpu.system + cpu.children_user + cpu.children_system


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def model_origin(models_root: str | Path, name: str) -> dict:
    """Name, source and revision or file hash of a model folder, from its card (empty when absent)."""
    card = Path(models_root) / name / "card.json"
    if not card.exists():
        return {"name": name}
    data = json.loads(card.read_text())
    extra = data.get("extra", {})
    return {"name": name, "source": data.get("source"), "revision": data.get("revision"),
            "file_sha256": extra.get("gguf_sha256"), "architecture": data.get("architecture"),
            "weights_origin": extra.get("weights_origin")}


def run_identity(*, stage: str, study: str, model: dict, config: dict, seed: int, device: str, dtype: str,
                 tasks: list[str] | None = None, method: str | None = None, setting: str | None = None,
                 overrides: list[str] | None = None, multirun: bool = False) -> dict:
    """What ran and on what: the run record without its costs, known before the work starts.

    Stages hand it to the library, whose results keep it as their ``info``.
    """
    changed = changed_source_files()
    return {
        "stage": stage, "study": study, "model": model, "tasks": list(tasks or []), "method": method,
        "setting": setting, "overrides": list(overrides or []), "multirun": multirun,
        "seed": seed, "config_hash": config_hash(config),
        "git_revision": git_revision(), "git_dirty": None if changed is None else bool(changed),
        "git_changed_files": (changed or [])[:MAX_CHANGED_SHOWN],
        "libraries": library_versions(), "device": device, "dtype": dtype, "argv": sys.argv[1:],
    }


def peak_gpu_memory_mb() -> float | None:
    """Peak memory torch allocated on CUDA devices in this process, in MiB (summed over devices); None
    where CUDA was never used."""
    torch = sys.modules.get("torch")  # not imported here: a stage that never loaded torch used no GPU
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20


def run_costs() -> dict:
    """What the execution cost so far: process wall and CPU seconds, peak resident memory (and peak
    GPU memory where CUDA was used)."""
    wall, cpu = process_seconds()
    gpu = peak_gpu_memory_mb()
    return {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "peak_memory_mb": round(peak_memory_mb(), 1),
            **({} if gpu is None else {"peak_gpu_memory_mb": round(gpu, 1)})}


def build_run_record(identity: dict) -> dict:
    """Everything ``run.json`` holds: ``identity`` plus the costs; call at the end of the stage."""
    return {**identity, **run_costs()}


__all__ = ["build_run_record", "config_hash", "library_versions", "model_origin", "peak_gpu_memory_mb", "peak_memory_mb",
           "run_costs", "run_identity"]
