"""Shared fixtures: the real conf/ composed and shrunk (tiny model, CPU, tmp paths)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jaxtyping import install_import_hook

import tests.typecheck  # noqa: F401  (the hook looks the checker up by this module's dotted name)

# every interpipe module imported from here on checks its annotations at call time (tests/typecheck.py)
_TYPECHECK = install_import_hook("interpipe", "tests.typecheck.typechecker")

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TINY_TOY = [
    "model.toy.n_layer=2", "model.toy.n_head=2", "model.toy.n_embd=32", "model.toy.steps=40",
    "model.toy.batch_size=16", "model.toy.log_every=10", "model.toy.warmup_steps=5",
]
TINY_DATA = ["data.n_train=60", "data.n_test=8"]


def compose(overrides: list[str] | None = None):
    """Compose the real root config with overrides (outside any Hydra app)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from stages import schema

    schema.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = list(overrides or [])
        if not any(o.startswith("paths.out=") for o in overrides):
            overrides.append("paths.out=outputs/test-compose")  # outside an app there is no hydra.run.dir
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """Small prepared task datasets."""
    from interpipe.data import PrepareSettings, prepare_all

    root = tmp_path_factory.mktemp("data")
    prepare_all(root, PrepareSettings(n_train=60, n_test=8))
    return root


@pytest.fixture(scope="session")
def tiny_toy_folder(tmp_path_factory, data_root) -> Path:
    """A canonical folder of a tiny toy GPT-2 trained for a few steps."""
    from interpipe.models.build import BuildRequest, build_model
    from interpipe.settings.models import ToySettings

    folder = tmp_path_factory.mktemp("models") / "toy"
    toy = ToySettings(n_layer=2, n_head=2, n_embd=32, steps=40, batch_size=16, log_every=10, warmup_steps=5)
    build_model(BuildRequest(name="toy", source="toy", kind="causal_lm", toy=toy), data_root, folder)
    return folder


def run_module(module: str, *args: str, timeout: float = 300, env: dict | None = None):
    """Run ``python -m module args`` from the repository root; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def arch_tokenizer(data_root):
    """One byte-level BPE tokenizer, trained on the task texts, shared by the architecture matrix."""
    from tests.architectures import task_texts, train_tokenizer

    return train_tokenizer(task_texts(data_root))


@pytest.fixture(scope="session")
def arch_folders(tmp_path_factory, arch_tokenizer) -> dict:
    """Canonical folders of a tiny random model of every family (``tests/architectures.py``).

    Keys: the causal families, ``bert`` (a sequence classifier) and the unsupported families.
    """
    from tests.architectures import CAUSAL_FAMILIES, UNSUPPORTED, save_tiny_folder

    root = tmp_path_factory.mktemp("archs")
    folders = {f: save_tiny_folder(f, root / f, arch_tokenizer) for f in CAUSAL_FAMILIES + UNSUPPORTED}
    folders["bert"] = save_tiny_folder("bert", root / "bert", arch_tokenizer, kind="sequence_classifier")
    return folders
