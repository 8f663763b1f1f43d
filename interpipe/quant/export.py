"""Migrated full-precision model folders: written by the study, read back by any study.

Pre-LN and parallel blocks (GPT-2, GPT-NeoX, Llama, Qwen2, OPT): stock ``from_pretrained`` loads the
folder and matches the original in full precision. Post-LN (BERT, MiniLM): the vanilla class would
miss the shortcut restore (``shortcuts.safetensors``); load it with :func:`load_migrated`. OS+ input
shifts of linears behind bias-free norms (``input_shifts.safetensors``) cancel at full precision and
matter only to the quantizer, which :func:`load_migrated` re-arms.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from interpipe.io import write_json
from interpipe.quant.arch import input_shifts_of, install_shortcut, set_input_shift, shortcuts_of


def save_migrated(folder: Path, model, tokenizer, card, style: str, method: str) -> Path:
    """Write the migrated FP model: an HF folder plus the extras only interpipe's quantizer reads."""
    from safetensors.torch import save_file

    from interpipe.models import save_model_folder

    card = replace(card, name=f"{card.name}-{method}-migrated", extra={**card.extra, "migration": method,
                                                                         "block_style": style})
    save_model_folder(folder, model, tokenizer, card)
    note = {"method": method, "block_style": style,
            "load": "interpipe.quant.load_migrated" if style == "post_ln" else "transformers from_pretrained"}
    for file, tensors in (("shortcuts.safetensors", shortcuts_of(model)), ("input_shifts.safetensors", input_shifts_of(model))):
        if tensors:
            save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(folder / file))
            note[file] = "interpipe.quant.load_migrated re-applies it"
    write_json(folder / "migration.json", note)
    return folder


def load_migrated(folder: str | Path, device: str = "cpu"):
    """Load a migrated model folder (re-installing shortcut restores and input shifts); a ``LoadedModel``."""
    from safetensors.torch import load_file

    from interpipe.models import load_model

    folder = Path(folder)
    loaded = load_model(folder, device=device)
    if (folder / "shortcuts.safetensors").exists():
        tensors = load_file(str(folder / "shortcuts.safetensors"))
        for key in sorted(k for k in tensors if k.endswith(".scale")):
            module = key[: -len(".scale")]
            install_shortcut(loaded.model.get_submodule(module), tensors[key], tensors[f"{module}.shift"])
    if (folder / "input_shifts.safetensors").exists():
        for key, delta in load_file(str(folder / "input_shifts.safetensors")).items():
            set_input_shift(loaded.model.get_submodule(key[: -len(".input_shift")]), delta)
    return loaded
