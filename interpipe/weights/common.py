"""Plumbing shared by the weight-level studies: blocks, per-head weights, batches, checkpoints.

Per-head attention weights come from TransformerLens's ``TransformerBridge`` (the same wrapper the
circuit study uses), so GPT-2 and GPT-NeoX/Pythia share one code path. LayerNorm folding follows
TransformerLens's ``fold_ln`` + ``center_writing_weights``: the LN gain is multiplied into the
reading weights, reading weights are centred over ``d_model`` (LN's input is mean-free), and
writing weights are centred over ``d_model`` (every reader starts with an LN that removes the mean).
Value biases only add a constant (attention rows sum to 1), i.e. they fold into ``b_O`` and leave
the OV matrices unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from interpipe.models.tokens import context_length, encode_prompts
from interpipe.typing import Float, Tensor


def boot_bridge(model, tokenizer, folder: str | Path, copy: bool = True):
    """Wrap an HF causal LM in a ``TransformerBridge``.

    TransformerLens 4.3 replaces the HF model's submodules by bridge wrappers in place (and its
    split q/k/v views then break ``save_pretrained``), so by default a deep copy is wrapped and
    ``model`` stays a plain HF model.
    """
    import copy as copy_module

    from transformer_lens.model_bridge import TransformerBridge

    hf_model = copy_module.deepcopy(model) if copy else model
    return TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer)


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of an HF causal LM (``transformer.h``, ``gpt_neox.layers``...)."""
    n_layers = getattr(model.config, "n_layer", None) or getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")


@dataclass
class HeadWeights:
    """LN-folded, centred per-head weights of every layer (TransformerLens layout).

    ``W_Q``, ``W_K``, ``W_V``: (layer, head, d_model, d_head); ``W_O``: (layer, head, d_head, d_model).
    ``OV = W_V @ W_O`` and ``QK = W_Q @ W_K^T`` act on row vectors (``x @ OV``).
    """

    W_Q: Float[Tensor, "layer head d_model d_head"]
    W_K: Float[Tensor, "layer head d_model d_head"]
    W_V: Float[Tensor, "layer head d_model d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]


@torch.no_grad()
def folded_head_weights(bridge) -> HeadWeights:
    """Per-head weights with the attention LayerNorm's gain folded in and both sides centred."""
    qs, ks, vs, os_ = [], [], [], []
    for block in bridge.blocks:
        gain = block.ln1.weight.detach().float()  # (d_model,)
        reads = []
        for w in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
            w = w.detach().float() * gain[None, :, None]  # (head, d_model, d_head)
            reads.append(w - w.mean(dim=1, keepdim=True))  # centre over d_model (LN input is mean-free)
        w_o = block.attn.W_O.detach().float()  # (head, d_head, d_model)
        qs.append(reads[0]), ks.append(reads[1]), vs.append(reads[2])
        os_.append(w_o - w_o.mean(dim=-1, keepdim=True))  # centre writes (readers' LNs drop the mean)
    return HeadWeights(*(torch.stack(t).cpu() for t in (qs, ks, vs, os_)))  # small: analysed on the CPU


def out_projection(model, bridge, layer: int) -> tuple[torch.nn.Parameter, bool]:
    """The attention output projection weight of ``layer`` in the plain HF ``model`` (the one
    ``bridge`` copied) and whether it is stored ``(d_in, d_out)`` (GPT-2 ``Conv1D``) rather than
    ``(d_out, d_in)`` (``nn.Linear``). Found as the block's projection equal to the bridge's ``attn.o``."""
    target = bridge.blocks[layer].attn.o._original_component.weight
    for module in transformer_blocks(model)[layer].modules():
        weight = getattr(module, "weight", None)
        if weight is not None and weight.shape == target.shape and torch.equal(weight.detach(), target.detach()):
            return weight, type(module).__name__ == "Conv1D"
    raise ValueError(f"cannot find layer {layer}'s attention output projection in {type(model).__name__}")


def encode_texts(tokenizer, texts: list[str], model) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (batch, pos) and attention mask for whole texts (BOS added by the tokenizer)."""
    ids, mask, _ = encode_prompts(tokenizer, texts, context_length(model))
    return ids, mask


def token_losses(logits: Float[Tensor, "batch pos d_vocab"], ids: torch.Tensor,
                 mask: torch.Tensor) -> Float[Tensor, "n_tokens"]:
    """Next-token cross-entropy of every real (non-pad) predicted position, flattened."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return nll[mask[:, 1:].bool()]


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def corpus_loss(model, tokenizer, texts: list[str], batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``texts`` (on the model's device)."""
    device = model_device(model)
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        ids, mask = encode_texts(tokenizer, texts[i:i + batch_size], model)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        nll = token_losses(logits, ids.to(device), mask.to(device))
        total, count = total + float(nll.sum()), count + nll.numel()
    return total / max(count, 1)


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A generator seeded by (seed, step): the same batches after a resume as without one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write ``tensors`` (safetensors) and ``state`` (JSON in the metadata) atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".checkpoint.tmp.safetensors"
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"state": json.dumps(state)})
    os.replace(tmp, folder / "checkpoint.safetensors")


def load_checkpoint(folder: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The last checkpoint in ``folder`` if it was written for the same ``fingerprint``, else None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / "checkpoint.safetensors"
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


class StudyResult:
    """One study's result: flat ``metrics``, named ``tables`` (DataFrames), named ``tensors`` and
    ``info`` (model, seed, settings). Subclasses add ``plot()``.

    ``save(folder)`` writes ``result.json`` (metrics + info), ``<table>.csv``, ``tensors.safetensors``
    and every figure of ``plot()`` as PNG; ``load(folder)`` reads them back (not the figures).
    """

    study = "study"

    def __init__(self, metrics: dict, tables: dict, tensors: dict | None = None, info: dict | None = None):
        self.metrics = dict(metrics)
        self.tables = dict(tables)
        self.tensors = dict(tensors or {})
        self.info = dict(info or {})

    def to_frame(self, name: str | None = None):
        """The named table (default: the first one)."""
        if not self.tables:
            raise ValueError(f"{self.study} result has no tables")
        if name is None:
            return next(iter(self.tables.values()))
        if name not in self.tables:
            raise KeyError(f"no table {name!r}; tables: {sorted(self.tables)}")
        return self.tables[name]

    def plot(self) -> dict:
        """Figures by file stem; subclasses override."""
        return {}

    def save(self, folder: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        from safetensors.torch import save_file

        from interpipe.io import OutputExistsError, save_figure, write_frame, write_json

        folder = Path(folder)
        if (folder / "result.json").exists() and not overwrite:
            raise OutputExistsError(f"{folder} already holds a result; pass overwrite=True")
        folder.mkdir(parents=True, exist_ok=True)
        for name, frame in self.tables.items():
            write_frame(folder / f"{name}.csv", frame)
        if self.tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()},
                      str(folder / "tensors.safetensors"))
        if figures:
            for stem, fig in self.plot().items():
                save_figure(fig, folder / f"{stem}.png")
        write_json(folder / "result.json", {"study": self.study, "metrics": self.metrics, "info": self.info,
                                            "tables": sorted(self.tables)})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "StudyResult":
        import pandas as pd
        from safetensors.torch import load_file

        from interpipe.io import read_json

        folder = Path(folder)
        meta = read_json(folder / "result.json")
        if meta.get("study") != cls.study and cls.study != "study":
            raise ValueError(f"{folder} holds a {meta.get('study')!r} result, not {cls.study!r}")
        tables = {name: pd.read_csv(folder / f"{name}.csv") for name in meta["tables"]}
        path = folder / "tensors.safetensors"
        tensors = load_file(str(path)) if path.exists() else {}
        return cls(meta["metrics"], tables, tensors, meta["info"])


def remove_checkpoint(folder: Path) -> None:
    """Delete a finished run's checkpoint (and its folder when that is then empty)."""
    import contextlib

    (folder / "checkpoint.safetensors").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
