"""Comprehensiveness and sufficiency by token removal (DeYoung et al. 2020, ERASER), as AOPC.

For every ratio ``k`` (default 10..90 %) the top ``n = max(1, round(k · n_eligible))`` tokens of
an example (by score, ties broken by position) are removed (*comprehensiveness*) or all but
them are removed (*sufficiency*); only eligible tokens (real, non-special) are ever ranked or
removed. Removal is ``mask`` (replace with the mask token), ``pad`` (replace with the pad token)
or ``delete`` (drop the token; a causal LM is then read at the new last token). Reported per
ratio and averaged over ratios (AOPC):

- confidence drop: ``f(x) − f(x')`` with ``f = p(target)`` (higher comprehensiveness and lower
  sufficiency mean a more faithful ranking); under a contrastive target (``batch.foil_ids``)
  ``f`` is the logit difference ``logit(answer) − logit(foil)``, in nats;
- accuracy: how often ``argmax`` of the perturbed input is still the gold answer (contrastive:
  how often the answer still beats the foil).

``mean`` replaces a token's input embedding by the mean input embedding over the vocabulary
(a point inside the embedding cloud rather than a token the model may never have seen as input).

Soft variants (Zhao & Aletras 2023) perturb the word embeddings instead of removing tokens:
with scores min-max normalised to ``ŝ ∈ [0, 1]`` per example, each embedding element is kept
with probability ``1 − ŝ_i`` (soft comprehensiveness) or ``ŝ_i`` (soft sufficiency), seeded.
Normalised (Soft-NC / Soft-NS), both are divided by the drop of the fully perturbed input (every
eligible embedding zeroed), so 1 means "as much as removing everything". The guard: an example
whose fully perturbed drop is below ``min_drop`` in absolute value (a prediction that removing
everything barely moves, e.g. a target probability of 2e-4) is left out as NaN rather than
divided by a vanishing number.
"""

from __future__ import annotations

import torch

from interpipe.attribution.inputs import Batch
from interpipe.attribution.model import ScoredModel
from interpipe.typing import Float, Int, Tensor

REMOVALS = ("mask", "pad", "delete", "mean")
MEAN_TOKEN = -1  # placeholder id of the mean embedding in perturbed inputs


def replacement_token(tokenizer, rule: str, kind: str = "sequence_classifier") -> tuple[str, int | None]:
    """Resolve ``auto|mask|pad|delete|mean`` to ``(rule, token id)``.

    ``auto``: the mask token for a tokenizer that has one and a model that is not a causal LM
    (the paper's [MASK]); ``mean`` for causal LMs, whose tokenizers have no mask token and whose
    pad token is an end-of-text marker never seen mid-prompt. The mean embedding lies inside the
    input distribution's embedding cloud, keeps every other token at its position, and on the
    toy GPT-2 saturates least: random removal's comprehensiveness is .48 with it against .58 (pad)
    and .82 (delete, which leaves prompts too short to carry the task; default run, 32 prompts). Pad otherwise.
    """
    if rule == "auto":
        if kind == "causal_lm":
            rule = "mean"
        else:
            rule = "mask" if getattr(tokenizer, "mask_token_id", None) is not None else "pad"
    if rule == "delete":
        return rule, None
    if rule == "mean":
        return rule, MEAN_TOKEN
    if rule not in REMOVALS:
        raise ValueError(f"attribute.replacement={rule!r} is not one of ('auto',) + {REMOVALS}")
    token = getattr(tokenizer, f"{rule}_token_id", None)
    if token is None:
        raise ValueError(f"attribute.replacement={rule!r} but the tokenizer has no {rule} token; "
                         f"use pad, delete or auto")
    return rule, int(token)


def ranks(scores: Float[Tensor, "batch pos"], eligible) -> Int[Tensor, "batch pos"]:
    """Each position's rank among its example's eligible tokens (0 = highest score, ties by position)."""
    masked = torch.where(eligible, scores.float(), float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices  # (batch, pos)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).to(order.device))  # rank of each pos
    return rank


def top_n_masks(scores: Float[Tensor, "batch pos"], eligible, counts: Tensor):
    """Boolean ``(k, batch, pos)`` masks of each example's top ``counts[k, b]`` eligible tokens."""
    rank = ranks(scores, eligible)  # (batch, pos)
    return (rank[None] < counts[..., None]) & eligible[None]  # (k, batch, pos)


def top_k_masks(scores: Float[Tensor, "batch pos"], eligible, ratios: list[float]):
    """Boolean ``(ratio, batch, pos)`` masks of each example's top ``max(1, round(k · n_eligible))`` tokens."""
    n_elig = eligible.sum(1).float()  # (batch,)
    counts = torch.stack([torch.clamp(torch.round(k * n_elig), min=1) for k in ratios])  # (ratio, batch)
    return top_n_masks(scores, eligible, counts)


def perturb(batch: Batch, remove, rule: str, token: int | None, kind: str):
    """Inputs with the tokens in ``remove: (n, pos)`` removed. Returns ``(ids, mask, score_pos)``."""
    ids, attn = batch.input_ids, batch.attention_mask
    if rule != "delete":
        return torch.where(remove, torch.as_tensor(token, device=ids.device), ids), attn, batch.score_pos
    keep = attn.bool() & ~remove
    new_ids, new_attn = torch.zeros_like(ids), torch.zeros_like(attn)
    for b in range(ids.shape[0]):  # compact each row to the left (right padding)
        kept = ids[b][keep[b]]
        new_ids[b, : len(kept)] = kept
        new_attn[b, : len(kept)] = 1
    pos = new_attn.sum(1) - 1 if kind == "causal_lm" else batch.score_pos
    return new_ids, new_attn, pos


def readout(logits: Float[Tensor, "batch n_out"], targets: Int[Tensor, "batch"],
            foils: Int[Tensor, "batch"]) -> tuple[Float[Tensor, "batch"], Int[Tensor, "batch"]]:
    """``(f, prediction)`` per row: ``f = p(target)`` and the argmax, or, where ``foil >= 0``, the
    logit difference ``logit(target) − logit(foil)`` and the preferred of target and foil.

    >>> f, pred = readout(torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([1]), torch.tensor([2]))
    >>> float(f), int(pred)
    (1.0, 1)
    """
    logits = logits.float()
    p = logits.softmax(-1).gather(1, targets[:, None]).squeeze(1)  # (batch,)
    diff = (logits.gather(1, targets[:, None]) - logits.gather(1, foils.clamp_min(0)[:, None])).squeeze(1)
    contrast = foils >= 0
    preferred = torch.where(diff > 0, targets, foils)
    return torch.where(contrast, diff, p), torch.where(contrast, preferred, logits.argmax(-1))


@torch.inference_mode()
def _probs(sm: ScoredModel, ids, attn, pos, targets, foils, chunk: int, embeds=None):
    """:func:`readout` for every row, ``chunk`` rows per forward (padding trimmed per chunk)."""
    probs, preds = [], []
    for s in range(0, ids.shape[0], chunk):
        sl = slice(s, s + chunk)
        width = int(attn[sl].sum(1).max())  # right padding: later columns are padding in every row
        if embeds is None and (ids[sl] < 0).any():  # the mean-embedding placeholder
            e = sm.embed(ids[sl, :width].clamp_min(0))  # (chunk, width, d_model)
            mean = sm.embeddings.weight.mean(0).to(e.dtype)  # (d_model,)
            e = torch.where((ids[sl, :width] == MEAN_TOKEN)[..., None], mean, e)
            kwargs = {"inputs_embeds": e}
        else:
            kwargs = ({"inputs_embeds": embeds[sl, :width]} if embeds is not None else {"input_ids": ids[sl, :width]})
        logits, _ = sm.forward(attn[sl, :width], pos[sl], **kwargs)
        f, pred = readout(logits, targets[sl], foils[sl])
        probs.append(f)
        preds.append(pred)
    return torch.cat(probs), torch.cat(preds)


def memo_probs(sm: ScoredModel, ids, attn, pos, targets, foils, chunk: int, memo: dict | None):
    """:func:`_probs` that runs each distinct ``(ids, mask, pos, target, foil)`` row once.

    Different methods, layers and ratios often remove the same tokens; ``memo`` keeps the
    answers across calls (exact: the same input gives the same output).
    """
    memo = {} if memo is None else memo
    keys = [(r.tobytes(), m.tobytes(), int(q), int(t), int(f)) for r, m, q, t, f in
            zip(ids.cpu().numpy(), attn.cpu().numpy(), pos.tolist(), targets.tolist(), foils.tolist())]
    todo = list(dict.fromkeys(k for k in keys if k not in memo))
    if todo:
        where = {k: i for i, k in enumerate(keys)}
        rows = torch.tensor([where[k] for k in todo], device=ids.device)
        p, pred = _probs(sm, ids[rows], attn[rows], pos[rows], targets[rows], foils[rows], chunk)
        memo.update(zip(todo, zip(p.tolist(), pred.tolist())))
    p, pred = zip(*(memo[k] for k in keys))
    return torch.tensor(p, device=ids.device), torch.tensor(pred, device=ids.device)


def _repeat(batch: Batch, times: int) -> Batch:
    return batch.select(list(range(len(batch))) * times)  # (times * batch) rows, ratio-major


def full_probs(sm: ScoredModel, batch: Batch, targets, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """``(f, prediction)`` (:func:`readout`) on the unperturbed inputs (shared by every metric and method)."""
    batch = batch.to(sm.device)
    return _probs(sm, batch.input_ids, batch.attention_mask, batch.score_pos, targets.to(sm.device), batch.foil_ids,
                  chunk)


def removal_curves(sm: ScoredModel, batch: Batch, scores, targets: Int[Tensor, "batch"], ratios: list[float],
                   rule: str, token: int | None, chunk: int = 256, full=None, memo: dict | None = None) -> dict[str, Tensor]:
    """Per-example, per-ratio probabilities and accuracies under comprehensiveness/sufficiency.

    Returns tensors ``p_full, acc_full: (batch,)`` and ``comp_drop, suff_drop, comp_acc,
    suff_acc: (ratio, batch)`` (``p`` is :func:`readout`'s ``f``). ``full`` is :func:`full_probs`
    when already computed; ``memo`` shares the perturbed inputs' answers across calls (see :func:`memo_probs`).
    """
    batch = batch.to(sm.device)
    targets, scores = targets.to(sm.device), scores.to(sm.device)
    p_full, pred_full = full if full is not None else full_probs(sm, batch, targets, chunk)
    top = top_k_masks(scores, batch.eligible, ratios)  # (ratio, batch, pos)
    n_r, n_b = len(ratios), len(batch)
    rep = _repeat(batch, 2 * n_r)
    remove = torch.cat([top, batch.eligible[None] & ~top]).reshape(2 * n_r * n_b, -1)  # (2·ratio·batch, pos)
    ids, attn, pos = perturb(rep, remove, rule, token, sm.kind)
    p, pred = memo_probs(sm, ids, attn, pos, targets.repeat(2 * n_r), rep.foil_ids, chunk, memo)
    p, pred = p.reshape(2, n_r, n_b), pred.reshape(2, n_r, n_b)  # (comp|suff, ratio, batch)
    gold = batch.gold_ids[None, None]
    return {"p_full": p_full.cpu(), "acc_full": (pred_full == batch.gold_ids).float().cpu(),
            "comp_drop": (p_full - p[0]).cpu(), "suff_drop": (p_full - p[1]).cpu(),
            "comp_acc": (pred[0] == gold[0]).float().cpu(), "suff_acc": (pred[1] == gold[0]).float().cpu()}


def normalise(scores, eligible) -> Float[Tensor, "batch pos"]:
    """Min-max normalise scores over each example's eligible tokens to [0, 1] (0 elsewhere)."""
    lo = torch.where(eligible, scores, float("inf")).min(1, keepdim=True).values
    hi = torch.where(eligible, scores, float("-inf")).max(1, keepdim=True).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return torch.where(eligible, (scores - lo) / span, torch.zeros_like(scores))


def soft_scores(sm: ScoredModel, batch: Batch, scores, targets, seed: int, chunk: int = 256,
                full=None, normalised: bool = False, min_drop: float = 1e-6) -> dict[str, Tensor]:
    """Soft comprehensiveness and sufficiency drops per example (Zhao & Aletras 2023).

    ``normalised``: divided by the drop of the fully perturbed input (Soft-NC / Soft-NS); NaN
    where that drop is below ``min_drop`` in absolute value (nothing to normalise by).
    """
    batch = batch.to(sm.device)
    targets = targets.to(sm.device)
    with torch.no_grad():
        embeds = sm.embed(batch.input_ids)  # (batch, pos, d_model)
    s_hat = normalise(scores.to(sm.device).float(), batch.eligible)[..., None]  # (batch, pos, 1)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(embeds.shape, generator=gen).to(embeds.device)
    elig = batch.eligible[..., None]
    keep_comp = torch.where(elig, (u >= s_hat).to(embeds.dtype), 1.0)  # kept with probability 1 - ŝ
    keep_suff = torch.where(elig, (u < s_hat).to(embeds.dtype), 1.0)  # kept with probability ŝ
    parts = [embeds * keep_comp, embeds * keep_suff] + ([embeds * (~elig).to(embeds.dtype)] if normalised else [])
    k = len(parts)
    stacked = torch.cat(parts)  # (k·batch, pos, d_model)
    rep = lambda x: torch.cat([x] * k)  # noqa: E731
    p_full, _ = full if full is not None else full_probs(sm, batch, targets, chunk)
    p, _ = _probs(sm, rep(batch.input_ids), rep(batch.attention_mask), rep(batch.score_pos),
                  rep(targets), rep(batch.foil_ids), chunk, embeds=stacked)
    n = len(batch)
    comp, suff = p_full - p[:n], p_full - p[n:2 * n]
    if normalised:
        whole = p_full - p[2 * n:]  # (batch,) drop with every eligible embedding zeroed
        ok = whole.abs() >= max(min_drop, 1e-12)
        denom = torch.where(ok, whole, torch.ones_like(whole))
        comp = torch.where(ok, comp / denom, float("nan"))
        suff = torch.where(ok, suff / denom, float("nan"))
    return {"soft_comp_drop": comp.cpu(), "soft_suff_drop": suff.cpu()}
