"""Bigram subnetworks: the sparse set of weights that makes a model predict like a bigram model.

Chang & Bergen, *Bigram Subnetworks: Mapping to Next Tokens in Transformer Language Models*
(2025, arXiv 2504.15471; tylerachang/bigram-subnetworks). Every attention and MLP weight matrix
``W`` of the transformer blocks gets a mask-logit tensor ``s`` of its shape (embeddings,
unembedding, LayerNorms and biases are not masked; base weights stay frozen). Continuous
sparsification (Savarese et al. 2020) trains ``s`` with the soft mask ``sigmoid(beta s)``, ``beta``
growing each step, on

    loss = CE(masked model's next-token distribution, bigram distribution) + lambda * L0 / n

where the bigram distribution ``p(next | current token)`` is counted on the training corpus (mixed
with ``smoothing`` of the uniform distribution) and ``L0 / n`` is the expected fraction of kept
weights. The final subnetwork is the hard mask ``s > 0``.

Reported: fraction kept, correlation of the subnetwork's and the bigram model's surprisal on
held-out text, mask density per matrix and layer (share in the first MLP), and the full model's
loss with the subnetwork ablated against a random subnetwork of the same size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from interpipe.weights.common import (StudyResult, batch_generator, fingerprint, load_checkpoint, optimizer_tensors,
                                      remove_checkpoint, restore_optimizer, save_checkpoint, token_losses)


def matrix_roles(model) -> dict[str, tuple[int, str, str]]:
    """``{parameter name: (layer, kind, matrix)}`` of every attention/MLP weight matrix of the blocks,
    from the :class:`~interpipe.models.arch.ArchSpec` paths (``kind`` is ``attn`` or ``mlp``; ``matrix``
    is ``"<layer>.<path inside the block>"``)."""
    import os

    from interpipe.weights.common import architecture

    spec = architecture(model, "bigram")
    out = {}
    for b in spec.blocks:
        attn, mlp = (*b.qkv, b.attn_out), (*b.mlp_in, b.mlp_out)
        block = os.path.commonprefix([*attn, *mlp]).rsplit(".", 1)[0] + "."  # e.g. "transformer.h.0."
        for kind, paths in (("attn", attn), ("mlp", mlp)):
            for path in paths:
                out[f"{path}.weight"] = (b.index, kind, f"{b.index}.{path[len(block):]}")
    return out


def maskable_weights(model) -> dict[str, torch.nn.Parameter]:
    """Every attention/MLP weight matrix inside the transformer blocks, by full parameter name."""
    return {name: model.get_parameter(name) for name in matrix_roles(model)}


def masked_logits(model, masks: dict[str, torch.Tensor], **inputs) -> torch.Tensor:
    """Logits of ``model`` with every named weight multiplied by its mask (base weights untouched)."""
    params = {}
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        params[name] = weight * mask.to(weight.device)
    return functional_call(model, params, args=(), kwargs=inputs).logits


@dataclass
class BigramTable:
    """Top-``K`` successors of every token: ids (V, K) and probabilities (V, K); ``seen`` (V,)."""

    succ_ids: torch.Tensor
    succ_p: torch.Tensor
    seen: torch.Tensor
    smoothing: float

    @classmethod
    def count(cls, ids: torch.Tensor, mask: torch.Tensor, vocab: int, max_successors: int, smoothing: float) -> "BigramTable":
        """Count bigrams over right-padded ``ids`` (batch, pos) with attention ``mask``."""
        valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (batch, pos - 1)
        pairs = ids[:, :-1][valid] * vocab + ids[:, 1:][valid]  # (n_pairs,)
        keys, counts = torch.unique(pairs, return_counts=True)
        prev, nxt = keys // vocab, keys % vocab
        k = min(max_successors, vocab)
        succ_ids = torch.zeros(vocab, k, dtype=torch.long)
        succ_c = torch.zeros(vocab, k)
        totals = torch.zeros(vocab).index_add_(0, prev, counts.float())
        order = torch.argsort(prev * (counts.max() + 1) - counts)  # by prev, then count descending
        prev, nxt, counts = prev[order], nxt[order], counts[order]
        starts = torch.searchsorted(prev, prev)  # first index of each prev
        rank = torch.arange(len(prev)) - starts
        keep = rank < k
        succ_ids[prev[keep], rank[keep]] = nxt[keep]
        succ_c[prev[keep], rank[keep]] = counts[keep].float()
        succ_p = succ_c / totals.clamp(min=1)[:, None]
        return cls(succ_ids, succ_p, totals > 0, smoothing)

    def to(self, device) -> "BigramTable":
        return BigramTable(self.succ_ids.to(device), self.succ_p.to(device), self.seen.to(device), self.smoothing)

    def cross_entropy(self, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean CE between the model's distribution at each real position and the bigram target."""
        logq = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        sid, sp = self.succ_ids[ids], self.succ_p[ids]  # (B, T, K)
        sp = sp / sp.sum(-1, keepdim=True).clamp(min=1e-12)  # renormalise the kept successors
        eps = torch.where(self.seen[ids], self.smoothing, 1.0)  # unseen tokens: uniform target
        ce = -(1 - eps) * (sp * logq.gather(-1, sid)).sum(-1) - eps * logq.mean(-1)  # (B, T)
        m = mask.bool()
        return ce[m].mean()

    def surprisal(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bigram surprisal (nats) of every real next token, flattened like ``token_losses``."""
        prev, nxt = ids[:, :-1], ids[:, 1:]
        p = (self.succ_p[prev] * (self.succ_ids[prev] == nxt[..., None])).sum(-1)  # (B, T-1)
        eps = torch.where(self.seen[prev], self.smoothing, 1.0)
        p = (1 - eps) * p + eps / self.succ_ids.shape[0]
        return -torch.log(p)[mask[:, 1:].bool()]


class BigramResult(StudyResult):
    """Bigram subnetwork: density tables, surprisal correlation, ablations (masks: ``masks.safetensors``)."""

    study = "bigram"

    def plot(self) -> dict:
        from interpipe.weights.plots import plot_bigram

        return plot_bigram(self)


def save_masks(path: str | Path, masks: dict[str, torch.Tensor]) -> Path:
    """Write hard masks (uint8) to a safetensors file."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.uint8).contiguous() for k, v in masks.items()}, str(path))
    return Path(path)


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Read masks written by :func:`save_masks` (float 0/1 tensors by parameter name)."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}


@torch.no_grad()
def apply_masks(model, masks: dict[str, torch.Tensor], ablate: bool = False) -> None:
    """Multiply the named weights by their masks in place (``ablate``: by ``1 - mask`` instead)."""
    for name, mask in masks.items():
        param = model.get_parameter(name)
        param.mul_((1 - mask if ablate else mask).to(param.dtype))


def train_masks(model, table: BigramTable, ids: torch.Tensor, mask: torch.Tensor, s, seed: int,
                checkpoint_dir: Path | None = None):
    """Train mask logits; returns (hard masks, training-curve rows). Resumes from ``checkpoint_dir``."""
    for p in model.parameters():
        p.requires_grad_(False)
    weights = maskable_weights(model)
    names = list(weights)
    logits_s = {n: torch.full_like(w, s.mask_init, dtype=torch.float32, requires_grad=True) for n, w in weights.items()}
    opt = torch.optim.Adam(list(logits_s.values()), lr=s.lr)
    n_total = sum(w.numel() for w in weights.values())
    key = fingerprint(asdict(s), seed, len(ids), n_total)
    start, curve = 0, []
    resumed = load_checkpoint(checkpoint_dir, key) if checkpoint_dir else None
    if resumed:
        tensors, state = resumed
        with torch.no_grad():
            for n in names:
                logits_s[n].copy_(tensors[f"s/{n}"])
        restore_optimizer(opt, names, tensors)
        start, curve = state["step"], state["curve"]
    device = next(model.parameters()).device
    table = table.to(device)
    for step in tqdm(range(start, s.steps), desc="bigram masks", initial=start, total=s.steps):
        beta = s.temperature_growth ** step
        idx = torch.randint(len(ids), (s.batch_size,), generator=batch_generator(seed, step))
        m = mask[idx]
        width = int(m.sum(1).max())
        b_ids, b_mask = ids[idx, :width].to(device), m[:, :width].to(device)  # (B, T)
        soft = {n: torch.sigmoid(beta * logits_s[n]) for n in names}
        ce = table.cross_entropy(masked_logits(model, soft, input_ids=b_ids, attention_mask=b_mask), b_ids, b_mask)
        density = sum(v.sum() for v in soft.values()) / n_total
        loss = ce + s.l0_lambda * density
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append({"step": step, "bigram_ce": ce.item(), "expected_density": density.item(), "beta": beta,
                      "hard_density": float(sum((v > 0).sum() for v in logits_s.values()) / n_total)})
        if checkpoint_dir and ((step + 1) % s.checkpoint_every == 0) and step + 1 < s.steps:
            save_checkpoint(checkpoint_dir, {**{f"s/{n}": logits_s[n] for n in names}, **optimizer_tensors(opt, names)},
                            {"fingerprint": key, "step": step + 1, "curve": curve})
    return {n: (logits_s[n] > 0).float().detach() for n in names}, curve


@torch.no_grad()
def _eval(model, ids, mask, batch_size: int, masks=None) -> torch.Tensor:
    """Token surprisal (flattened) of ``model`` (optionally masked) on ``ids``."""
    out = []
    device = next(model.parameters()).device
    for i in range(0, len(ids), batch_size):
        b_ids, b_mask = ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)
        logits = (masked_logits(model, masks, input_ids=b_ids, attention_mask=b_mask) if masks is not None
                  else model(input_ids=b_ids, attention_mask=b_mask).logits)
        out.append(token_losses(logits, b_ids, b_mask).cpu())
    return torch.cat(out)


def random_masks_like(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random subnetwork with as many weights as ``masks`` in total, drawn uniformly over all entries."""
    sizes = [m.numel() for m in masks.values()]
    k = int(sum(float(m.sum()) for m in masks.values()))
    flat = torch.zeros(sum(sizes))
    flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:k]] = 1.0
    return {n: chunk.view_as(m) for (n, m), chunk in zip(masks.items(), flat.split(sizes))}


def density_frame(masks: dict[str, torch.Tensor], model):
    """Per-matrix mask density (DataFrame): layer, matrix, kind (attn/mlp), n, kept, density."""
    import pandas as pd

    roles = matrix_roles(model)
    rows = []
    for name, m in masks.items():
        layer, kind, matrix = roles[name]
        rows.append({"layer": layer, "matrix": matrix, "kind": kind, "n": m.numel(),
                     "kept": int(m.sum()), "density": float(m.mean())})
    return pd.DataFrame(rows)


def run_bigram(loaded, data_root, s, seed: int = 0, batch_size: int = 64, out_dir=None,
               checkpoint_dir=None) -> BigramResult:
    """Train the bigram subnetwork of ``loaded`` on the prepared corpus and evaluate it."""
    import pandas as pd
    from scipy import stats

    from interpipe.data import load_task
    from interpipe.weights.common import encode_texts

    model, tok = loaded.model, loaded.tokenizer
    train = load_task(data_root, "corpus", "train")["text"]
    valid = load_task(data_root, "corpus", "validation")["text"]
    train = train[: s.max_train_texts] if s.max_train_texts else train
    valid = valid[: s.max_eval_texts] if s.max_eval_texts else valid
    ids, mask = encode_texts(tok, list(train), model)
    v_ids, v_mask = encode_texts(tok, list(valid), model)
    vocab = model.get_output_embeddings().weight.shape[0]
    table = BigramTable.count(ids, mask, vocab, s.max_successors, s.smoothing)

    masks, curve = train_masks(model, table, ids, mask, s, seed, Path(checkpoint_dir) if checkpoint_dir else None)
    bigram = table.surprisal(v_ids, v_mask)
    full = _eval(model, v_ids, v_mask, batch_size)
    sub = _eval(model, v_ids, v_mask, batch_size, masks)
    ablated = _eval(model, v_ids, v_mask, batch_size, {n: 1 - m for n, m in masks.items()})
    rand = random_masks_like(masks, seed)
    rand_ablated = _eval(model, v_ids, v_mask, batch_size, {n: 1 - m for n, m in rand.items()})
    dens = density_frame(masks, model)
    n_masked, kept = int(dens["n"].sum()), int(dens["kept"].sum())
    first_mlp = int(dens[(dens["layer"] == 0) & (dens["kind"] == "mlp")]["kept"].sum())
    per_layer = dens.groupby("layer")[["n", "kept"]].sum()
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {
        "fraction_kept": kept / n_masked, "fraction_kept_of_all_params": kept / n_params, "n_kept": kept,
        "n_masked": n_masked, "first_mlp_share": first_mlp / max(kept, 1),
        "surprisal_corr_subnetwork": float(stats.pearsonr(sub, bigram).statistic),
        "surprisal_corr_full_model": float(stats.pearsonr(full, bigram).statistic),
        "loss_full": float(full.mean()), "loss_subnetwork": float(sub.mean()), "loss_bigram_model": float(bigram.mean()),
        "loss_ablate_subnetwork": float(ablated.mean()), "loss_ablate_random": float(rand_ablated.mean()),
        "final_bigram_ce": curve[-1]["bigram_ce"] if curve else float("nan"),
        **{f"density_layer{layer}": float(r.kept / r.n) for layer, r in per_layer.iterrows()},
    }
    sample = torch.randperm(len(bigram), generator=torch.Generator().manual_seed(seed))[:2000]
    tokens = pd.DataFrame({"bigram": bigram[sample].numpy(), "subnetwork": sub[sample].numpy(), "full": full[sample].numpy()})
    if out_dir is not None:
        save_masks(Path(out_dir) / "masks.safetensors", masks)
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "n_train_texts": len(train),
            "n_eval_texts": len(valid)}
    if checkpoint_dir:
        remove_checkpoint(Path(checkpoint_dir))
    return BigramResult(metrics, {"mask_density": dens, "training_curve": pd.DataFrame(curve),
                                  "surprisal_sample": tokens}, {}, info)
