"""Resumable training for the weight-level studies that train (bigram masks, LayerNorm removal).

A run writes ``checkpoint.safetensors`` every few steps: its tensors (weights or masks, the Adam
state flattened by :func:`optimizer_tensors`) and, in the metadata, the step and the
:func:`fingerprint` of the settings that produced it. :func:`load_checkpoint` resumes only a
checkpoint with the same fingerprint; :func:`batch_generator` draws the same batches after a resume
as without one; :func:`remove_checkpoint` deletes it when the run is done.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A generator seeded by (seed, step): the same batches after a resume as without one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def checkpoint_file(folder: Path) -> Path:
    """The checkpoint a run keeps in ``folder``."""
    return folder / "checkpoint.safetensors"


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write ``tensors`` (safetensors) and ``state`` (JSON in the metadata) atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".checkpoint.tmp.safetensors"
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"state": json.dumps(state)})
    os.replace(tmp, checkpoint_file(folder))


def load_checkpoint(folder: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The last checkpoint in ``folder`` if it was written for the same ``fingerprint``, else None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = checkpoint_file(folder)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as handle:
        state = json.loads(handle.metadata()["state"])
    if state.get("fingerprint") != fingerprint:
        return None  # written for other settings: start over
    return load_file(str(path)), state


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    """Flatten an Adam(W) optimizer's state to named tensors (for safetensors)."""
    out = {}
    for name, param in zip(names, optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(param, {}).items():
            out[f"optim/{name}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    for name, param in zip(names, optimizer.param_groups[0]["params"]):
        state = {key.rsplit("/", 1)[1]: value.to(param.device) for key, value in tensors.items()
                 if key.startswith(f"optim/{name}/")}
        if state:
            optimizer.state[param] = state


def fingerprint(*parts) -> str:
    """A short stable hash of settings, used to match checkpoints to the run that wrote them."""
    import hashlib

    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def remove_checkpoint(folder: Path) -> None:
    """Delete a finished run's checkpoint (and its folder when that is then empty)."""
    checkpoint_file(folder).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
