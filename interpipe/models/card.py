"""The model card written beside every canonical model folder (``card.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from interpipe.io import read_json, write_json


@dataclass
class ModelCard:
    """Where a model came from and what it is."""

    name: str
    source: str  # "toy" | "minilm" | hub name | local path
    kind: str  # one of MODEL_KINDS
    revision: str | None = None
    architecture: str = ""
    n_params: int = 0
    n_layers: int = 0
    n_heads: int = 0
    d_model: int = 0
    d_vocab: int = 0
    n_ctx: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    seconds: float = 0.0  # load or training time
    training_curve: list[dict] = field(default_factory=list)  # [{"step", "loss", ...}]
    extra: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / "card.json", asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> "ModelCard":
        path = Path(folder) / "card.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder} has no card.json: it is not a model folder written by the "
                                    f"model stage; run `dvc repro model` or `python -m stages.model model=...`")
        return cls(**read_json(path))


def describe(model, name: str, source: str, kind: str, revision: str | None = None, **extra) -> ModelCard:
    """Fill a card's size fields from a Hugging Face model's config."""
    cfg = model.config
    get = lambda *names: next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), 0)  # noqa: E731
    first = next(model.parameters())
    return ModelCard(
        name=name, source=source, kind=kind, revision=revision,
        architecture=(cfg.architectures or [type(model).__name__])[0],
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=int(get("num_hidden_layers", "n_layer")),
        n_heads=int(get("num_attention_heads", "n_head")),
        d_model=int(get("hidden_size", "n_embd")),
        d_vocab=int(get("vocab_size")),
        n_ctx=int(get("max_position_embeddings", "n_positions")),
        device=str(first.device), dtype=str(first.dtype).replace("torch.", ""),
        **extra,
    )
