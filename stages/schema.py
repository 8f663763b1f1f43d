"""Structured-config schemas: every config group is validated by a dataclass.

The dataclasses live in the library (plain dataclasses, no Hydra); this module registers them
with Hydra's ConfigStore so that an unknown key or a wrong type fails at composition, and
``validate`` instantiates them (running each ``__post_init__`` range check) before any model
or data loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from interpipe.data import PrepareSettings
from interpipe.settings.models import ToySettings
from interpipe.runtime import DTYPES
from interpipe.tracking import TrackingSettings

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class PathsConfig:
    data: str = "outputs/data"  # prepared task datasets (prepare stage)
    models: str = "outputs/models"  # canonical model folders (model stage)
    out: str = "${hydra:runtime.output_dir}"  # this execution's output folder


@dataclass
class ModelConfig:
    name: str = "toy"  # folder name under paths.models
    source: str = "toy"  # toy | minilm | smollm2 | hub name | local folder | a local .gguf file
    kind: str = "causal_lm"  # causal_lm | encoder | sequence_classifier
    revision: Optional[str] = None  # hub revision (branch, tag or commit)
    trust_remote_code: bool = False  # never run hub code unless asked
    device_map: Optional[str] = None  # "auto" shards models larger than one GPU
    finetune_task: Optional[str] = None  # e.g. sentiment: fine-tune a classification head on it
    finetune: dict = field(default_factory=dict)  # settings of that fine-tuning
    toy: ToySettings = field(default_factory=ToySettings)

    def __post_init__(self) -> None:
        from interpipe.settings.models import MODEL_KINDS

        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r} is not one of {MODEL_KINDS}")
        if self.finetune:
            from interpipe.settings.models import FinetuneSettings

            try:
                FinetuneSettings(**self.finetune)  # unknown keys and bad values fail here, before any load
            except TypeError as exc:
                raise ValueError(f"model.finetune: {exc} (valid keys: {list(FinetuneSettings.__dataclass_fields__)})") from exc


@dataclass
class RootConfig:
    seed: int = 0  # seeds Python, NumPy and torch
    device: str = "auto"  # auto picks CUDA when present
    dtype: str = "float32"  # float32 | bfloat16 | float16
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PrepareSettings = field(default_factory=PrepareSettings)
    logger: TrackingSettings = field(default_factory=TrackingSettings)
    # study groups: each validated by its own schema, registered below
    attribute: Any = None
    circuits: Any = None
    weights: Any = None
    quantize: Any = None
    quant_interp: Any = None
    report: Any = None
    experiment: Any = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r} is not one of {DEVICES} (or cuda:N)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")


def _study_schemas() -> list[tuple[str, type]]:
    """(group, dataclass) of every study; imported here so the library stays free of Hydra."""
    from interpipe.settings.attribute import AttributeSettings
    from interpipe.settings.circuits import CircuitSettings
    from interpipe.settings.quant_interp import QuantInterpSettings
    from interpipe.settings.quantize import QuantSettings
    from interpipe.settings.report import ReportSettings
    from interpipe.settings.weights import WeightsSettings

    return [("attribute", AttributeSettings), ("circuits", CircuitSettings), ("weights", WeightsSettings),
            ("quantize", QuantSettings), ("quant_interp", QuantInterpSettings), ("report", ReportSettings)]


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="data", name="schema", node=PrepareSettings)
    cs.store(group="logger", name="schema", node=TrackingSettings)
    for group, schema in _study_schemas():
        cs.store(group=group, name="schema", node=schema)


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Messages for every key of ``cfg`` that its schema does not declare, at any depth.

    Hydra's ``+key=`` and ``++key=`` add keys even to struct configs, so composition alone lets a
    typo through; this walk catches every route. Each message names the key and the closest valid ones.
    """
    import dataclasses
    import difflib

    schema_type = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema_type):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema_type)}
    problems: list[str] = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(prefix + c for c in close)}?" if close else \
                f"valid keys here: {', '.join(prefix + f for f in fields)}"
            problems.append(f"unknown key {path!r}: {hint}")
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            problems += unknown_keys(node, f"{path}.")
    return problems


def validate(cfg: DictConfig) -> Any:
    """Refuse unknown keys, then instantiate every schema in ``cfg`` (running the range checks).

    Raises ``ValueError`` naming the offending key and its allowed values or closest valid keys.
    """
    problems = unknown_keys(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    return OmegaConf.to_object(cfg)
