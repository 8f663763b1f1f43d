"""Bigram subnetworks: the sparse set of weights that makes a model predict like a bigram model.

Chang & Bergen, *Bigram Subnetworks: Mapping to Next Tokens in Transformer Language Models*
(2025, arXiv 2504.15471; tylerachang/bigram-subnetworks). Every attention and MLP weight matrix
``W`` of the transformer blocks gets a mask-logit tensor ``s`` of its shape (embeddings,
unembedding, LayerNorms and biases are not masked; base weights stay frozen). Continuous
sparsification (Savarese et al. 2020) trains ``s`` with the soft mask ``sigmoid(beta s)``, ``beta``
growing each step, on

    loss = CE(masked model's next-token distribution, bigram distribution) + lambda * L0 / n

where the bigram distribution ``p(next | current token)`` is the official
``ngram_predict_with_backoff`` target: bigram counts of the training corpus with pairs seen fewer
than ``prune_minimum`` times pruned, and the unigram distribution for a current token with no
bigram left (no uniform mixing). ``L0 / n`` is the expected fraction of kept weights. The
optimiser is AdamW (weight decay 0.01, as the official code); ``beta`` grows by
``temperature_growth`` per step and training stops once fewer than ``undecided_stop`` of the entries
are undecided (``sigmoid(beta s)`` in [0.1, 0.9]) or after ``steps``. The final subnetwork is the
hard mask ``s > 0``.

Reported: steps run, undecided fraction at stop, fraction kept, correlation of the subnetwork's and
the bigram model's surprisal on held-out text (bootstrap 95 % interval over tokens) next to a random
subnetwork of the same size, mask density per matrix and layer (share in the first MLP), and the
full model's loss with the subnetwork ablated against the random subnetwork ablated. Surprisal of
the bigram model needs every next token to have some probability: it mixes ``1e-3`` of the
add-one unigram distribution into the target (:data:`SURPRISAL_FLOOR`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from interpipe.divergence import DivergenceGuard
from interpipe.weights.checkpoint import (batch_generator, checkpoint_file, fingerprint, load_checkpoint,
                                          optimizer_tensors, remove_checkpoint, restore_optimizer, save_checkpoint)
from interpipe.weights.common import token_losses
from interpipe.weights.result import StudyResult


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
    """Logits of ``model`` with every named weight multiplied by its mask (base weights untouched).

    The (float32) masks are cast to each weight's device and dtype, so a bfloat16 model runs in
    bfloat16 while the gradient still reaches the float32 mask logits.
    """
    params = {}
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        params[name] = weight * mask.to(weight)  # (same shape as weight), in the weight's dtype
    return functional_call(model, params, args=(), kwargs=inputs).logits


SURPRISAL_FLOOR = 1e-3  # add-one unigram mass mixed into the bigram model when its surprisal is evaluated
UNDECIDED = (0.1, 0.9)  # a mask entry sigmoid(beta s) inside this range is undecided (official stop rule)


@dataclass
class BigramTable:
    """Backoff bigram targets: top-``K`` successors of every token, ids (V, K) and probabilities
    (V, K) after pruning rare pairs; ``has_bigram`` (V,) marks tokens with any successor left (the
    others back off to ``unigram`` (V,)); ``unigram_add_one`` (V,) is positive everywhere."""

    succ_ids: torch.Tensor
    succ_p: torch.Tensor
    has_bigram: torch.Tensor
    unigram: torch.Tensor
    unigram_add_one: torch.Tensor

    @classmethod
    def count(cls, ids: torch.Tensor, mask: torch.Tensor, vocab: int, max_successors: int,
              prune_minimum: int = 2) -> "BigramTable":
        """Count bigrams over right-padded ``ids`` (batch, pos) with attention ``mask``; pairs seen
        fewer than ``prune_minimum`` times are dropped (official ``prune_minimum=2``)."""
        valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (batch, pos - 1)
        pairs = ids[:, :-1][valid] * vocab + ids[:, 1:][valid]  # (n_pairs,)
        uni = torch.zeros(vocab).index_add_(0, ids[:, 1:][valid], torch.ones(int(valid.sum())))  # (V,) next-token counts
        keys, counts = torch.unique(pairs, return_counts=True)
        keys, counts = keys[counts >= prune_minimum], counts[counts >= prune_minimum]
        prev, nxt = keys // vocab, keys % vocab
        k = min(max_successors, vocab)
        succ_ids = torch.zeros(vocab, k, dtype=torch.long)
        succ_c = torch.zeros(vocab, k)
        if len(keys):
            order = torch.argsort(prev * (counts.max() + 1) - counts)  # by prev, then count descending
            prev, nxt, counts = prev[order], nxt[order], counts[order]
            rank = torch.arange(len(prev)) - torch.searchsorted(prev, prev)  # rank within each prev
            keep = rank < k
            succ_ids[prev[keep], rank[keep]] = nxt[keep]
            succ_c[prev[keep], rank[keep]] = counts[keep].float()
        totals = succ_c.sum(-1)  # (V,) kept successors only: the kept rows renormalised
        return cls(succ_ids, succ_c / totals.clamp(min=1)[:, None], totals > 0, uni / uni.sum().clamp(min=1),
                   (uni + 1) / (uni.sum() + vocab))

    def to(self, device) -> "BigramTable":
        return BigramTable(*(t.to(device) for t in (self.succ_ids, self.succ_p, self.has_bigram, self.unigram,
                                                      self.unigram_add_one)))

    def cross_entropy(self, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean CE between the model's distribution at each real position and the backoff target."""
        logq = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        bigram = -(self.succ_p[ids] * logq.gather(-1, self.succ_ids[ids])).sum(-1)  # (B, T)
        unigram = -(logq * self.unigram).sum(-1)  # (B, T)
        ce = torch.where(self.has_bigram[ids], bigram, unigram)  # (B, T)
        return ce[mask.bool()].mean()

    def surprisal(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bigram-model surprisal (nats) of every real next token, flattened like ``token_losses``
        (the backoff target with :data:`SURPRISAL_FLOOR` of the add-one unigram mixed in)."""
        prev, nxt = ids[:, :-1], ids[:, 1:]
        p_bigram = (self.succ_p[prev] * (self.succ_ids[prev] == nxt[..., None])).sum(-1)  # (B, T-1)
        p = torch.where(self.has_bigram[prev], p_bigram, self.unigram[nxt])
        p = (1 - SURPRISAL_FLOOR) * p + SURPRISAL_FLOOR * self.unigram_add_one[nxt]
        return -torch.log(p)[mask[:, 1:].bool()]


def undecided_fraction(soft: dict[str, torch.Tensor]) -> float:
    """Fraction of soft-mask entries still undecided (inside :data:`UNDECIDED`)."""
    lo, hi = UNDECIDED
    n = sum(v.numel() for v in soft.values())
    return float(sum(((v > lo) & (v < hi)).sum() for v in soft.values())) / n


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
    opt = torch.optim.AdamW(list(logits_s.values()), lr=s.lr, weight_decay=s.weight_decay)
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
    guard = _bigram_guard(s, checkpoint_dir)
    saved_at = time.monotonic()
    for step in tqdm(range(start, s.steps), desc=guard.loop, initial=start, total=s.steps):
        beta = s.temperature_growth ** step
        idx = torch.randint(len(ids), (s.batch_size,), generator=batch_generator(seed, step))
        m = mask[idx]
        width = int(m.sum(1).max())
        b_ids, b_mask = ids[idx, :width].to(device), m[:, :width].to(device)  # (B, T)
        soft = {n: torch.sigmoid(beta * logits_s[n]) for n in names}
        ce = table.cross_entropy(masked_logits(model, soft, input_ids=b_ids, attention_mask=b_mask), b_ids, b_mask)
        density = sum(v.sum() for v in soft.values()) / n_total
        loss = ce + s.l0_lambda * density
        guard.loss(step, loss)
        opt.zero_grad()
        loss.backward()
        guard.gradients(step, logits_s.values())
        opt.step()
        undecided = undecided_fraction({n: v.detach() for n, v in soft.items()})  # before this step's update
        curve.append({"step": step, "bigram_ce": ce.item(), "expected_density": density.item(), "beta": beta,
                      "hard_density": float(sum((v > 0).sum() for v in logits_s.values()) / n_total),
                      "undecided": undecided})
        if undecided < s.undecided_stop:
            break  # converged: the official stop rule
        if checkpoint_dir and time.monotonic() - saved_at >= 60 * s.checkpoint_minutes and step + 1 < s.steps:
            save_checkpoint(checkpoint_dir, {**{f"s/{n}": logits_s[n] for n in names}, **optimizer_tensors(opt, names)},
                            {"fingerprint": key, "step": step + 1, "curve": curve})
            saved_at = time.monotonic()
    return {n: (logits_s[n] > 0).float().detach() for n in names}, curve


def _bigram_guard(s, checkpoint_dir: Path | None) -> DivergenceGuard:
    fix = (f"lower weights.bigram.lr (now {s.lr}) or weights.bigram.temperature_growth (now {s.temperature_growth}: "
           f"beta = growth ** step overflows on long schedules), or cap weights.bigram.steps (now {s.steps})")
    return DivergenceGuard("bigram masks", fix, checkpoint_file(checkpoint_dir) if checkpoint_dir else None)


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

    from interpipe.data import load_task
    from interpipe.stats import bootstrap, to_metrics
    from interpipe.weights.common import encode_texts

    model, tok = loaded.model, loaded.tokenizer
    train = load_task(data_root, "corpus", "train")["text"]
    valid = load_task(data_root, "corpus", "validation")["text"]
    train = train[: s.max_train_texts] if s.max_train_texts else train
    valid = valid[: s.max_eval_texts] if s.max_eval_texts else valid
    ids, mask = encode_texts(tok, list(train), model)
    v_ids, v_mask = encode_texts(tok, list(valid), model)
    vocab = model.get_output_embeddings().weight.shape[0]
    table = BigramTable.count(ids, mask, vocab, s.max_successors, s.prune_minimum)

    masks, curve = train_masks(model, table, ids, mask, s, seed, Path(checkpoint_dir) if checkpoint_dir else None)
    bigram = table.surprisal(v_ids, v_mask)
    full = _eval(model, v_ids, v_mask, batch_size)
    sub = _eval(model, v_ids, v_mask, batch_size, masks)
    ablated = _eval(model, v_ids, v_mask, batch_size, {n: 1 - m for n, m in masks.items()})
    rand = random_masks_like(masks, seed)
    rand_sub = _eval(model, v_ids, v_mask, batch_size, rand)
    rand_ablated = _eval(model, v_ids, v_mask, batch_size, {n: 1 - m for n, m in rand.items()})
    dens = density_frame(masks, model)
    n_masked, kept = int(dens["n"].sum()), int(dens["kept"].sum())
    first_mlp = int(dens[(dens["layer"] == 0) & (dens["kind"] == "mlp")]["kept"].sum())
    per_layer = dens.groupby("layer")[["n", "kept"]].sum()
    n_params = sum(p.numel() for p in model.parameters())
    corr = {name: _correlation(x, bigram) for name, x in (("subnetwork", sub), ("random_subnetwork", rand_sub),
                                                          ("full_model", full))}
    undecided = curve[-1]["undecided"] if curve else float("nan")
    metrics = {
        "steps_run": len(curve), "undecided_at_stop": undecided, "converged": int(undecided < s.undecided_stop),
        "fraction_kept": kept / n_masked, "fraction_kept_of_all_params": kept / n_params, "n_kept": kept,
        "n_masked": n_masked, "first_mlp_share": first_mlp / max(kept, 1),
        **{k: v for name, iv in corr.items() for k, v in to_metrics(f"surprisal_corr_{name}", iv).items()},
        "loss_full": float(full.mean()), "loss_subnetwork": float(sub.mean()), "loss_bigram_model": float(bigram.mean()),
        "loss_random_subnetwork": float(rand_sub.mean()),
        **to_metrics("loss_ablate_subnetwork", bootstrap(ablated.numpy())),
        **to_metrics("loss_ablate_random", bootstrap(rand_ablated.numpy())),
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
    return BigramResult(metrics, {"mask_density": dens, "training_curve": pd.DataFrame(curve), "surprisal_sample": tokens,
                                  "headline": headline_frame(loaded.card.name, metrics, s.l0_lambda)}, {}, info)


def _correlation(x: torch.Tensor, y: torch.Tensor):
    """Pearson correlation of two token-surprisal vectors with a bootstrap interval over tokens
    (at most 4000 tokens resampled, a fixed subsample, to keep the interval cheap)."""

    from interpipe.stats import Interval, bootstrap

    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:4000]
    pearson = lambda a, b: float(np.corrcoef(a, b)[0, 1]) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")  # noqa: E731
    iv = bootstrap(x[idx].numpy(), y[idx].numpy(), statistic=pearson, n_resamples=500)
    return Interval(pearson(x.numpy(), y.numpy()), iv.low, iv.high, len(x))  # estimate on every token


def headline_frame(model: str, metrics: dict, l0_lambda: float):
    """The quoted numbers: the subnetwork's surprisal correlation (baseline: a random subnetwork of
    the same size) and the loss with it ablated (baseline: the random one ablated)."""
    import pandas as pd

    method = f"bigram_subnetwork(lambda={l0_lambda:g})"
    row = lambda metric, key, baseline, base_key, note: {  # noqa: E731
        "model": model, "task": "corpus", "method": method, "metric": metric, "value": metrics[key],
        "ci_low": metrics.get(key + "_ci_low", float("nan")), "ci_high": metrics.get(key + "_ci_high", float("nan")),
        "baseline": baseline, "baseline_value": metrics[base_key], "note": note}
    note = (f"{metrics['fraction_kept']:.4f} of masked weights kept; undecided {metrics['undecided_at_stop']:.4f} "
            f"after {metrics['steps_run']} steps")
    return pd.DataFrame([
        row("surprisal_corr", "surprisal_corr_subnetwork", "random subnetwork, same size",
            "surprisal_corr_random_subnetwork", note),
        row("loss_ablated", "loss_ablate_subnetwork", "random subnetwork ablated", "loss_ablate_random",
            f"full model loss {metrics['loss_full']:.3f}"),
    ])
