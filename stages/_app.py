"""What every stage does around its one library call: validate, seed, write atomically, log.

A stage module is::

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def main(cfg):
        run_stage(cfg, "attribute", lambda settings, out, record: run_attribute(..., out_dir=out, info=record))

``run_stage`` validates the whole config first (bad values fail before any model loads),
seeds everything, lets the library write into a temporary folder beside the output folder,
writes ``metrics.json`` and moves it all into place only when the work succeeded, then logs
metrics, tables and figures to W&B.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from stages import schema

schema.register()


def _move_into(tmp: Path, out: Path) -> None:
    """Move every entry of ``tmp`` into ``out`` (replacing), ``metrics.json`` last."""
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(tmp.iterdir(), key=lambda p: p.name == "metrics.json")
    for entry in entries:
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def _sweep_dir() -> str | None:
    """The Hydra sweep folder when this execution is one job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def _run_identity(cfg: DictConfig, settings: Any, job_type: str, study: str, method: str | None) -> dict:
    """What this execution is (see :func:`interpipe.run_record.run_identity`), before its work starts."""
    from interpipe.run_record import model_origin, run_identity

    group = getattr(settings, job_type, None)  # the study group of a study stage (attribute, circuits, ...)
    tasks = getattr(group, "tasks", None) or getattr(group, "causal_tasks", None)
    setting = getattr(group, "study", None)
    model = {} if job_type in _model_free(settings) else model_origin(settings.paths.models, settings.model.name)
    return run_identity(stage=job_type, study=study, model=model, config=OmegaConf.to_container(cfg, resolve=True),
                        seed=settings.seed, device=settings.device, dtype=settings.dtype, tasks=tasks, method=method,
                        setting=setting, overrides=_task_overrides(), multirun=_sweep_dir() is not None)


def _model_free(settings: Any) -> tuple[str, ...]:
    return tuple(getattr(getattr(settings, "report", None), "model_free", ()))


def _task_overrides() -> list[str]:
    """The command line's config overrides (``model=toy``, ``quantize.bits=[w8a8]``)."""
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []


def run_stage(cfg: DictConfig, job_type: str, work: Callable[[Any, Path, dict], dict], name: str | None = None,
              tags: list[str] | None = None, method: str | None = None, study: str | None = None) -> dict:
    """Run one stage execution: ``work(settings, tmp_out, record) -> metrics``.

    ``settings`` is the validated config object (dataclasses); ``record`` is what this execution is
    (:func:`interpipe.run_record.run_identity`: model origin, seed, config hash, revision), which the
    library keeps as its results' ``info`` and ``run.json`` repeats with the costs added. The returned metrics are
    written to ``<out>/metrics.json``; everything ``work`` wrote into ``tmp_out`` appears in
    the output folder only if it returns normally. The W&B run is named
    ``<job_type>-<model>[-<method>]``, grouped by pipeline run or sweep
    (``tracking.default_group``) and tagged with stage, study, model and method.
    """
    from interpipe.io import DIR_MODE, write_json
    from interpipe.run_record import build_run_record
    from interpipe.runtime import seed_everything
    from interpipe.tracking import log_execution, log_in_background, name_run

    try:
        settings = schema.validate(cfg)
    except (ValueError, TypeError) as exc:
        sys.exit(f"config error: {exc}")
    seed_everything(settings.seed)
    out = Path(settings.paths.out)
    out.mkdir(parents=True, exist_ok=True)
    old_metrics = out / "metrics.json"
    if old_metrics.exists():
        old_metrics.unlink()  # a failed rerun must not leave the previous run's metrics looking current
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, DIR_MODE)
    start = time.perf_counter()
    logger = settings.logger
    report = getattr(settings, "report", None)
    study = study or (report.study_of(job_type) if hasattr(report, "study_of") else job_type)
    identity = _run_identity(cfg, settings, job_type, study, method)
    try:
        metrics = work(settings, tmp, identity)
        metrics = {**metrics, "stage_seconds": time.perf_counter() - start}
        write_json(tmp / "run.json", build_run_record(identity))
        from interpipe.headline import FILE, headline_metrics, read_headline

        if (tmp / FILE).exists():  # the study's quoted numbers, small enough for `dvc metrics show`
            write_json(tmp / "headline.json", headline_metrics(read_headline(tmp / FILE)))
        write_json(tmp / "metrics.json", metrics)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.name = logger.name or name
    model = "" if job_type in _model_free(settings) else settings.model.name
    name_run(logger, job_type, model, method, study, tags, _sweep_dir(), os.environ)
    config = OmegaConf.to_container(cfg, resolve=True)
    if logger.background and logger.mode != "disabled":
        log_in_background(logger, job_type, config, metrics, out)
    else:
        log_execution(logger, job_type, config, metrics, out)
    return metrics
