"""Task generators and dataset storage (``datasets`` folders under ``outputs/data/<task>``)."""

from interpipe.data.prepare import ALL_TASKS, CAUSAL_TASKS, PrepareSettings, prepare_all
from interpipe.data.store import load_hub_dataset, load_task

__all__ = ["ALL_TASKS", "CAUSAL_TASKS", "PrepareSettings", "prepare_all", "load_hub_dataset", "load_task"]
