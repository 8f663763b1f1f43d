"""Loading prepared task datasets and hub datasets."""

from __future__ import annotations

from pathlib import Path

from interpipe.hub import hub_reachable, offline_error


def load_task(data_root: str | Path, task: str, split: str = "test"):
    """Load one prepared task split as a ``datasets.Dataset``.

    Raises a ``FileNotFoundError`` that says which stage to run when it is missing, and a
    ``ValueError`` for an empty split.
    """
    from datasets import load_from_disk

    folder = Path(data_root) / task
    if not folder.exists():
        available = sorted(p.name for p in Path(data_root).glob("*") if p.is_dir()) if Path(data_root).exists() else []
        raise FileNotFoundError(f"no prepared data for task {task!r} at {folder}; run the prepare stage "
                                f"(`dvc repro prepare`) or pick one of {available}")
    dataset = load_from_disk(str(folder))[split]
    if len(dataset) == 0:
        raise ValueError(f"task {task!r} split {split!r} at {folder} is empty; regenerate it with n_test > 0")
    return dataset


def load_hub_dataset(name: str, config: str | None = None, split: str = "train",
                     revision: str | None = None, timeout: float = 3.0):
    """``datasets.load_dataset`` with a fast, explicit failure when the hub is unreachable.

    A local folder or file path is loaded directly. Offline, the HF cache is tried first
    (``HF_DATASETS_OFFLINE``), then a clear error naming the fix is raised within seconds.
    """
    from datasets import load_dataset

    if Path(name).exists():
        return load_dataset(name, config, split=split)
    if hub_reachable(timeout):
        return load_dataset(name, config, split=split, revision=revision)
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE)
    # offline mode read at import time: switch it on for this call only, so only the cache is tried
    hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = ds_config.HF_DATASETS_OFFLINE = True
    try:
        return load_dataset(name, config, split=split, revision=revision)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise offline_error("dataset", name, exc) from exc
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE = saved
