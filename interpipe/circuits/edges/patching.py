"""Exact edge patching: every receiver's input rebuilt from its senders, out-of-circuit edges corrupted.

In a run on the clean prompts, the input of receiver ``v`` is the sum of the outputs of the senders
before it (plus constants: biases, which clean and corrupted runs share). Patching the edges
outside a circuit ``C`` sets their share of that sum to the sender's output on the corrupted
prompts::

    input_v = resid_v + Σ_u  w[v, u] · (a_u(corrupted) − a_u(this run))        w = 1 − [u→v ∈ C]

where ``resid_v`` is the input the run computes and ``a_u(this run)`` the sender's output in the
same patched run (it changes as earlier edges are patched). This is MIB's interchange evaluation
(Mueller et al. 2025; Hanna et al. 2024, ``evaluate_graph``). The empty circuit gives the
corrupted run, the full one the clean run.

Many circuits are evaluated in one forward: the prompts are repeated variant-major
(``(variant, batch)`` rows), the sender outputs of the run are subtracted from the corrupted ones
as they are produced (a buffer ``[variant, sender, batch, pos, d_model]`` over the positions after
the shared prefix, and its running sum over senders), and each receiver hook adds ``w · buffer``
over the senders whose edges it moves, or the running sum minus ``(1 − w) · buffer`` over the few it
keeps, whichever touches fewer senders. Variants are chunked by ``memory_mb``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from interpipe.circuits.edges.graph import EdgeGraph
from interpipe.circuits.edges.hooks import INPUT_HOOK, Fired, edge_hooks, receiver_groups
from interpipe.circuits.engine import run_to_final
from interpipe.typing import Float, Int, Tensor, TokenIds


def sender_hooks(bridge: Any, graph: EdgeGraph, write: Callable[[int, Tensor], None]) -> list[tuple[str, Callable]]:
    """Hooks calling ``write(first sender column, outputs [rows, pos, n, d_model])`` for every sender."""

    def at(col: int, fn: Callable[[Tensor], Tensor]) -> Callable:
        def hook(act: Tensor, hook: Any) -> Tensor:
            write(col, fn(act))
            return act
        return hook

    hooks = [(INPUT_HOOK, at(0, lambda a: a[:, :, None]))]  # (rows, pos, 1, d_model)
    for layer in range(graph.n_layers):
        w_o = bridge.blocks[layer].attn.W_O  # (head, d_head, d_model)
        heads, (mlp,) = graph.sender_columns(layer, "head"), graph.sender_columns(layer, "mlp")
        hooks.append((f"blocks.{layer}.attn.hook_z",
                      at(heads[0], lambda z, w=w_o: torch.einsum("rphk,hkd->rphd", z, w.to(z.dtype)))))
        hooks.append((f"blocks.{layer}.hook_mlp_out", at(mlp, lambda a: a[:, :, None])))
    return hooks


def sender_outputs(bridge: Any, graph: EdgeGraph, tokens: TokenIds, answer_pos: Int[Tensor, "batch"]
                   ) -> tuple[Float[Tensor, "batch pos sender d_model"], Float[Tensor, "batch d_vocab"]]:
    """Every sender's output on one run, and the run's answer-position logits."""
    batch, n_pos = tokens.shape
    out = torch.zeros(batch, n_pos, graph.n_senders, bridge.cfg.d_model, dtype=_dtype(bridge), device=tokens.device)

    def write(col: int, value: Tensor) -> None:
        out[:, :, col:col + value.shape[2]] = value

    fired = Fired()
    hooks = [fired.wrap(n, f) for n, f in sender_hooks(bridge, graph, write)]
    with torch.inference_mode():
        logits = run_to_final(bridge, tokens, hooks, answer_pos)  # (batch, d_vocab)
    fired.check()
    return out.clone(), logits.clone()


def patched_logits(bridge: Any, graph: EdgeGraph, tokens: TokenIds, answer_pos: Int[Tensor, "batch"],
                   corrupted: Float[Tensor, "batch pos sender d_model"], weights: Float[Tensor, "variant receiver sender"],
                   prefix: int = 0) -> Float[Tensor, "variant batch d_vocab"]:
    """Answer-position logits of the run of ``tokens`` with each edge ``u → v`` moved ``weights[., v, u]``
    of the way to its corrupted value (1: patched, 0: kept), one variant per leading index.

    ``prefix``: leading positions where ``tokens`` equal the corrupted prompts (the shared prefix):
    every sender's output is the same in both runs there, so only later positions are rebuilt.
    """
    n_var, (batch, n_pos) = int(weights.shape[0]), tokens.shape
    weights = (weights * graph.allowed.to(weights.device)).to(corrupted.dtype)  # edges that do not exist never move
    state = _Buffer(corrupted[:, prefix:], n_var, prefix)
    fired = Fired()
    hooks = [fired.wrap(n, f) for n, f in sender_hooks(bridge, graph, state.write)]
    for name, layer, kind, rows in receiver_groups(graph):
        hooks.append(fired.wrap(name, state.receiver(weights[:, rows, :graph.prior_senders(layer, kind)])))
    with edge_hooks(bridge), torch.inference_mode():
        logits = run_to_final(bridge, tokens.repeat(n_var, 1), hooks, answer_pos)  # (variant*batch, d_vocab)
    fired.check()
    return logits.reshape(n_var, batch, -1).clone()


class _Buffer:
    """``corrupted − this run`` of every sender written so far, after the prefix, ``[variant, sender, batch, pos, d]``,
    and its running sum over senders ``[variant, batch, pos, d]``."""

    def __init__(self, corrupted: Tensor, n_var: int, prefix: int) -> None:
        self.n_var, self.prefix = n_var, prefix
        per_sender = corrupted.permute(2, 0, 1, 3)  # (sender, batch, pos, d)
        self.diff = per_sender.unsqueeze(0).repeat(n_var, 1, 1, 1, 1)  # (variant, sender, batch, pos, d)
        self.total = torch.zeros_like(self.diff[:, 0])  # (variant, batch, pos, d): Σ over written senders
        self.written = 0  # senders written so far (a prefix of the sender order)

    def write(self, col: int, value: Tensor) -> None:
        """A sender group's outputs in this run ``[variant*batch, pos, n, d]``."""
        v = value[:, self.prefix:]
        v = v.reshape(self.n_var, -1, *v.shape[1:]).permute(0, 3, 1, 2, 4)  # (variant, n, batch, pos, d)
        block = self.diff[:, col:col + v.shape[1]]
        block -= v
        self.total += block.sum(1)
        self.written = max(self.written, col + v.shape[1])

    def receiver(self, w: Tensor) -> Callable:
        """Hook adding ``Σ_u w[., v, u] · diff_u`` to each receiver ``v`` of one hook (``w``: ``[variant, v, prior]``)."""
        prior = int(w.shape[-1])
        moved = (w != 0).any(0).any(0).nonzero().flatten()  # senders some edge of the hook moves
        kept = (w != 1).any(0).any(0).nonzero().flatten()  # senders some edge of the hook does not fully move

        def hook(act: Tensor, hook: Any) -> Tensor:
            if moved.numel() == 0:
                return act
            if self.written == prior and kept.numel() < moved.numel():  # Σ w·d = total − Σ (1 − w)·d over the few kept
                update = self.total.unsqueeze(1).expand(-1, w.shape[1], -1, -1, -1)  # (variant, v, batch, pos, d)
                if kept.numel():
                    update = update - self._sum(1 - w[:, :, kept], kept)
            else:
                update = self._sum(w[:, :, moved], moved)
            x, v, b, p, d = update.shape
            update = update.permute(0, 2, 3, 1, 4).reshape(x * b, p, v, d)  # (rows, pos after prefix, receiver, d)
            out = act.clone()
            out[:, self.prefix:] += update if act.ndim == 4 else update[:, :, 0]
            return out

        return hook

    def _sum(self, w: Tensor, cols: Tensor) -> Tensor:
        """``Σ_u w[., v, u] · diff[:, cols[u]]`` as ``[variant, v, batch, pos, d]``."""
        k = cols.numel()
        contiguous = k == 0 or int(cols[-1]) == k - 1  # the first k senders: a view, no copy
        diff = self.diff[:, :k] if contiguous else self.diff[:, cols]  # (variant, k, batch, pos, d)
        out = torch.bmm(w, diff.reshape(diff.shape[0], k, -1))  # (variant, v, batch*pos*d)
        return out.reshape(diff.shape[0], w.shape[1], *diff.shape[2:])


def _dtype(bridge: Any) -> torch.dtype:
    return next(bridge.parameters()).dtype


def chunk_variants(graph: EdgeGraph, batch: int, n_pos: int, d_model: int, memory_mb: float, elt: int = 4) -> int:
    """How many variants share one forward under ``memory_mb`` (the sender buffer dominates)."""
    per_variant = elt * batch * n_pos * d_model * (graph.n_senders + 3 * graph.n_heads + 16)
    return max(1, int(memory_mb * 2**20 // per_variant))


def evaluate_circuits(bridge: Any, graph: EdgeGraph, tokens: TokenIds, answer_pos: Int[Tensor, "batch"],
                      corrupted: Float[Tensor, "batch pos sender d_model"], circuits: Tensor,
                      score: Callable[[Tensor], Tensor], memory_mb: float = 512.0, progress: bool = False,
                      prefix: int = 0) -> Tensor:
    """``score(logits [variant, batch, d_vocab])`` of each circuit ``circuits[i]`` (``[receiver, sender]``
    bool, True = kept), chunked; returns the scores stacked ``[circuit, ...]``."""
    size = chunk_variants(graph, int(tokens.shape[0]), int(tokens.shape[1]) - prefix, int(corrupted.shape[-1]), memory_mb)
    out = []
    for start in tqdm(range(0, len(circuits), size), desc="edge circuits", disable=not progress, leave=False):
        keep = circuits[start:start + size].to(corrupted.device)
        out.append(score(patched_logits(bridge, graph, tokens, answer_pos, corrupted, (~keep).float(), prefix)))
    return torch.cat(out)
