"""Top-k removal between a floor and a ceiling: where a ranking falls between chance and an oracle.

Removing 10 % or more of a short prompt's tokens (ERASER's ratios) can wipe out the prediction
whatever is removed, and then every ranking, random included, scores the same. Removing the
top ``k`` tokens for small ``k`` (1, 2, …, ``top_k``) does not saturate; the AOPC over ``k``
(Samek et al., "Evaluating the visualization of what a deep neural network has learned", IEEE
TNNLS 2017: the area over the most-relevant-first perturbation curve) is

    comprehensiveness_k = 1/K Σ_{k=1..K} f(x) − f(x without its top-k tokens)

with ``f`` the target (the answer − foil logit difference, or p(answer)) and the same removal
operator as the rest of the evaluator. A number in nats (or probability) means little alone, so
each example gets two references under that same operator:

- **ceiling (oracle)**: the exact leave-one-out effect ``δ_i = f(x) − f(x without token i)`` of
  every eligible token (occlusion, Zeiler & Fergus 2014; erasure, Li et al. 2016), used as a
  ranking. It is what a method that knows the answer gives: at ``k = 1`` no ranking can remove
  more; at larger ``k`` it is the additive best guess (interactions can let a method exceed it);
- **floor (chance)**: the expected drop of a uniformly random ranking, exact at ``k = 1`` (the
  mean of ``δ_i``) and the mean over ``draws`` seeded random rankings for ``k ≥ 2``.

The headline places each method between them (:func:`interpipe.attribution.uncertainty.normalised`):
``(method − floor) / (oracle − floor)``, 0 at chance, 1 at the oracle.
"""

from __future__ import annotations

import torch

from interpipe.attribution.inputs import Batch
from interpipe.attribution.model import ScoredModel
from interpipe.attribution.faithfulness.removal import full_probs, memo_probs, perturb, top_n_masks
from interpipe.typing import Float, Int, Tensor


def top_k_drops(sm: ScoredModel, batch: Batch, scores: Float[Tensor, "batch pos"], targets: Int[Tensor, "batch"],
                top_k: int, rule: str, token, chunk: int = 256, full=None,
                memo: dict | None = None) -> Float[Tensor, "k batch"]:
    """``f(x) − f(x without the top-k eligible tokens)`` for ``k = 1..top_k`` (capped at each example's
    number of eligible tokens), ranked by ``scores`` (ties by position)."""
    batch, targets = batch.to(sm.device), targets.to(sm.device)
    f_full, _ = full if full is not None else full_probs(sm, batch, targets, chunk)
    n_elig = batch.eligible.sum(1)  # (batch,)
    counts = torch.stack([n_elig.clamp(max=k) for k in range(1, top_k + 1)])  # (k, batch)
    remove = top_n_masks(scores.to(sm.device), batch.eligible, counts)  # (k, batch, pos)
    rep = batch.select(list(range(len(batch))) * top_k)  # (k·batch) rows, k-major
    ids, attn, pos = perturb(rep, remove.reshape(top_k * len(batch), -1), rule, token, sm.kind)
    f, _ = memo_probs(sm, ids, attn, pos, targets.repeat(top_k), rep.foil_ids, chunk, memo)
    return (f_full.to(f.device)[None] - f.reshape(top_k, len(batch))).cpu()  # (k, batch)


def leave_one_out(sm: ScoredModel, batch: Batch, targets: Int[Tensor, "batch"], rule: str, token,
                  chunk: int = 256, full=None, memo: dict | None = None) -> Float[Tensor, "batch pos"]:
    """The oracle's scores: ``δ[b, i] = f(x_b) − f(x_b without token i)`` at every eligible token, 0 elsewhere.

    One perturbed input per eligible token; the same inputs are every ranking's ``k = 1`` removal,
    so ``memo`` makes those free afterwards.
    """
    batch, targets = batch.to(sm.device), targets.to(sm.device)
    f_full, _ = full if full is not None else full_probs(sm, batch, targets, chunk)
    where = torch.nonzero(batch.eligible)  # (n, 2): (example, position) of every eligible token
    rows, cols = where[:, 0], where[:, 1]
    remove = torch.zeros((len(where), batch.input_ids.shape[1]), dtype=torch.bool, device=sm.device)
    remove[torch.arange(len(where), device=sm.device), cols] = True  # (n, pos): one token each
    sub = batch.select(rows.tolist())
    ids, attn, pos = perturb(sub, remove, rule, token, sm.kind)
    f, _ = memo_probs(sm, ids, attn, pos, targets[rows], sub.foil_ids, chunk, memo)
    delta = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=sm.device)  # (batch, pos)
    delta[rows, cols] = (f_full.to(f.device)[rows] - f).float()
    return delta.cpu()


def chance_floor(sm: ScoredModel, batch: Batch, targets: Int[Tensor, "batch"], loo: Float[Tensor, "batch pos"],
                 top_k: int, draws: int, seed: int, rule: str, token, chunk: int = 256, full=None,
                 memo: dict | None = None) -> Float[Tensor, "k batch"]:
    """The expected top-k drop of a uniformly random ranking: exact at ``k = 1``, sampled above.

    ``k = 1``: a random ranking removes each eligible token with probability ``1/n``, so the
    expectation is the mean of the leave-one-out effects ``loo``. ``k ≥ 2``: the mean over
    ``draws`` rankings drawn from a generator seeded with ``seed + 1`` (a stream apart from the
    ``random`` method's, which is seeded with ``seed`` and is scored against this floor).
    """
    elig = batch.eligible.cpu()
    exact = (loo * elig).sum(1) / elig.sum(1)  # (batch,)
    if top_k == 1:
        return exact[None]
    gen = torch.Generator().manual_seed(seed + 1)
    sampled = torch.stack([top_k_drops(sm, batch, torch.rand(elig.shape, generator=gen), targets, top_k, rule, token,
                                       chunk, full, memo)[1:] for _ in range(draws)])  # (draw, k - 1, batch)
    return torch.cat([exact[None], sampled.mean(0)])  # (k, batch)


def references(sm: ScoredModel, batch: Batch, targets: Int[Tensor, "batch"], top_k: int, draws: int, seed: int,
               rule: str, token, chunk: int = 256, full=None, memo: dict | None = None) -> dict[str, Tensor]:
    """The ceiling and the floor of one batch: ``loo (batch, pos)``, ``oracle`` and ``floor`` drops ``(k, batch)``."""
    full = full if full is not None else full_probs(sm, batch, targets, chunk)
    loo = leave_one_out(sm, batch, targets, rule, token, chunk, full, memo)
    oracle = top_k_drops(sm, batch, loo, targets, top_k, rule, token, chunk, full, memo)  # ranked by δ
    floor = chance_floor(sm, batch, targets, loo, top_k, draws, seed, rule, token, chunk, full, memo)
    return {"loo": loo, "oracle": oracle, "floor": floor}
