"""Seeds, devices and dtypes: the small bits of run-time state every stage needs."""

from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so the same config gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def resolve_device(device: str) -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a torch device; ``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but no CUDA device is visible; use device=cpu or device=auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    """Map a dtype name to a torch dtype, naming the allowed values on a mistake."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)}") from None


# What a pipeline run rewrites itself (DVC's lock files; `make run`'s results snapshot and the quoted blocks of
# the Markdown docs): a change there says nothing about the code that ran.
RUN_WRITTEN = ("dvc.lock", "results/*.csv", "*.md")


def git(*args: str, cwd: str | os.PathLike | None = None) -> str | None:
    """The stripped output of ``git <args>`` in ``cwd`` (default: the working directory), or None when git fails."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision() -> str | None:
    """The current git commit of the working directory, or None outside a repository."""
    return git("rev-parse", "HEAD") or None


def changed_source_files(cwd: str | os.PathLike | None = None) -> list[str] | None:
    """Tracked files of the whole repository that differ from its commit (staged or not), leaving out
    what a run rewrites itself (:data:`RUN_WRITTEN`, at any depth); None outside a repository.

    Untracked files are left out: outputs are ignored, and a new file a stage imports is a dep in
    ``dvc.yaml`` whose hash DVC records.
    """
    excluded = [f":(top,exclude,glob)**/{name}" for name in RUN_WRITTEN]
    out = git("diff", "--name-only", "HEAD", "--", ":(top)", *excluded, cwd=cwd)
    return None if out is None else out.splitlines()
