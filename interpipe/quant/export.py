"""Model folders written by the study: migrated full precision, and quantized (a model like any other).

Pre-LN and parallel blocks (GPT-2, GPT-NeoX, Llama, Qwen2, OPT): stock ``from_pretrained`` loads the
folder and matches the original in full precision. Post-LN (BERT, MiniLM): the vanilla class would
miss the shortcut restore (``shortcuts.safetensors``); load it with :func:`load_migrated`. OS+ input
shifts of linears behind bias-free norms (``input_shifts.safetensors``) cancel at full precision and
matter only to the quantizer. Both files come from the :class:`~interpipe.quant.migrate.Migration`
that :func:`~interpipe.quant.migrate.migrate` returned; :func:`load_migrated` rebuilds it (shortcut
restores installed) and returns it with the model (:class:`MigratedModel`).

:func:`save_quantized` writes one quantized setting as a model folder: the migrated weights already
fake-quantized, and the recipe (:mod:`interpipe.quant.recipe`) that
:func:`interpipe.models.load_model` re-applies on load, so every study runs on it unchanged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from interpipe.io import atomic_dir, write_json
from interpipe.models.loading import LoadedModel
from interpipe.quant.arch import is_conv1d, set_module
from interpipe.quant.migrate import Migration
from interpipe.quant.recipe import Recipe


@dataclass
class MigratedModel(LoadedModel):
    """A migrated model folder, loaded: the model (shortcut restores installed), tokenizer, card and
    the :class:`~interpipe.quant.migrate.Migration` read back (input shifts, shortcut restores)."""

    migration: Migration = field(default_factory=Migration)


def save_migrated(folder: Path, model, migration: Migration, tokenizer, card, style: str, method: str) -> Path:
    """Write the migrated FP model: an HF folder plus the extras of ``migration`` (shortcut restores,
    input shifts) that only interpipe reads."""
    from safetensors.torch import save_file

    from interpipe.models import save_model_folder

    card = replace(card, name=f"{card.name}-{method}-migrated", extra={**card.extra, "migration": method,
                                                                         "block_style": style})
    save_model_folder(folder, model, tokenizer, card)
    note = {"method": method, "block_style": style,
            "load": "interpipe.quant.load_migrated" if style == "post_ln" else "transformers from_pretrained"}
    for file, tensors in (("shortcuts.safetensors", migration.shortcut_tensors()),
                          ("input_shifts.safetensors", migration.input_shift_tensors())):
        if tensors:
            save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(folder / file))
            note[file] = "interpipe.quant.load_migrated re-applies it"
    write_json(folder / "migration.json", note)
    return folder


def load_migrated(folder: str | Path, device: str = "cpu") -> MigratedModel:
    """Load a migrated model folder, re-installing its shortcut restores and reading its input shifts."""
    from safetensors.torch import load_file

    from interpipe.models import load_model

    folder = Path(folder)
    loaded = load_model(folder, device=device)
    migration = Migration()
    if (folder / "shortcuts.safetensors").exists():
        tensors = load_file(str(folder / "shortcuts.safetensors"))
        for key in sorted(k for k in tensors if k.endswith(".scale")):
            module = key[: -len(".scale")]
            migration.add_shortcut(loaded.model, module, tensors[key], tensors[f"{module}.shift"])
    if (folder / "input_shifts.safetensors").exists():
        for key, delta in load_file(str(folder / "input_shifts.safetensors")).items():
            migration.add_input_shift(key[: -len(".input_shift")], delta)
    return MigratedModel(loaded.model, loaded.tokenizer, loaded.card, migration)


def _recipe_tensors(layers: dict, migration: Migration | None) -> dict:
    """Static ranges, input shifts with their offsets ``W delta`` and post-LN shortcut restores."""
    tensors = {}
    for path, layer in layers.items():
        for key in ("x_min", "x_max", "input_shift"):
            if getattr(layer, key) is not None:
                tensors[f"{path}.{key}"] = getattr(layer, key)
        if layer.input_shift is not None:
            tensors[f"{path}.shift_bias"] = layer.weight.detach() @ layer.input_shift  # (d_out,) as QuantLinear adds it
    for key, value in (migration.shortcut_tensors() if migration else {}).items():  # "<module>.scale" / ".shift"
        module, _, which = key.rpartition(".")
        tensors[f"{module}.shortcut_{which}"] = value
    return tensors


@torch.no_grad()
def _unwrap_quantized(model, layers: dict) -> None:
    """Put every wrapped linear back in place holding its fake-quantized weight (in place)."""
    shared = Counter(p.data_ptr() for _, p in model.named_parameters(remove_duplicate=False))
    for path, layer in layers.items():
        if shared[layer.inner.weight.data_ptr()] > 1:
            raise ValueError(f"cannot export {path}: its weight is tied to another (the input embeddings), which "
                             "would be quantized with it; drop 'head' from quantize.layers to export this model")
        qweight = layer.qweight()  # (d_out, d_in)
        layer.inner.weight.copy_(qweight.t() if is_conv1d(layer.inner) else qweight)
        set_module(model, path, layer.inner)


def save_quantized(folder: Path, model, layers: dict, tokenizer, card, recipe: Recipe,
                   migration: Migration | None, rotation=None) -> Path:
    """Write a quantized setting as a model folder (atomically); ``model`` is unwrapped in place.

    ``model`` holds the :class:`~interpipe.quant.layers.QuantLinear` ``layers`` (calibrated); ``recipe``
    its method, bits and grids (its tensors are filled here); ``migration`` the migration folded into it
    (None for RTN), whose shortcut restores the recipe carries; ``rotation`` the
    :class:`~interpipe.quant.rotate.Rotation` fused into it (QuaRot), whose online Hadamards and residual
    rotation the recipe carries.
    """
    from interpipe.models import save_model_folder

    tensors = _recipe_tensors(layers, migration)
    if rotation is not None:
        tensors.update({f"{path}.online_hadamard": h for path, h in rotation.online.items()})
        tensors["rotation.residual"] = rotation.residual
    recipe = replace(recipe, layers=list(layers), tensors=tensors)
    _unwrap_quantized(model, layers)
    quant = {k: getattr(recipe, k) for k in ("method", "bits", "protocol", "weight", "activation", "calib_seed",
                                             "threshold", "rotation") if getattr(recipe, k) is not None}
    card = replace(card, name=folder.name, extra={**card.extra, "base_model": card.name, "base_source": card.source,
                                                  "quantization": {**quant, "recipe": "quantization.json"}})
    with atomic_dir(folder) as tmp:
        save_model_folder(tmp, model, tokenizer, card)
        recipe.save(tmp)
    return folder
