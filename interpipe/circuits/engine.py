"""The batched patching engine: many interventions in one forward pass.

TransformerLens's ``transformer_lens.patching`` runs one forward per patched index. Here a list
of *variants* (each a set of :class:`Patch` es) is evaluated in batched forwards of
``n_variants × batch`` sequences, chunked by a memory budget:

* variants are grouped by the first block they touch and chunked; within a chunk the prompts run
  through the earlier blocks **once** at the original batch size, and the batch is expanded
  (variant-major, ``(variant, batch)`` flattened) on entry to the first patched block, via a
  forward pre-hook that repeats every batch-shaped input of the block (hidden states, the 4-D
  attention mask, position ids);
* positions that the target and the sources share (the common prefix of clean and corrupted
  prompts, identical in both runs of a causal model) are computed once into a key/value cache;
  the batched forwards run only the positions after it, and patches inside it (exact no-ops)
  are dropped;
* each hook applies all of its variants' patches at once with a boolean mask
  (``torch.where``) — no Python loop over the batch;
* the forward stops at the final LayerNorm's input; only the answer positions go through
  ``ln_final`` and the unembedding.

The result of a chunk is ``metric(logits)`` with logits ``[variant, batch, d_vocab]``: metrics
reduce the batch axis (see :mod:`interpipe.circuits.metrics`).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from interpipe.circuits.bridge import check_hook, hook_layer, hook_names
from interpipe.typing import Float, Int, Tensor, TokenIds


@dataclass(frozen=True)
class Patch:
    """Set ``activation[:, *index]`` at ``hook`` to the source's values (or add them when ``add``).

    ``index`` indexes the axes after the batch axis; ``None`` selects a whole axis. For
    ``blocks.{L}.attn.hook_z`` (``batch pos head d_head``), ``(None, 3)`` is head 3 at all
    positions and ``(5, 3)`` head 3 at position 5.
    """

    hook: str
    index: tuple[int | None, ...] = ()
    add: bool = False


Variant = Sequence[Patch]
Metric = Callable[[Float[Tensor, "variant batch d_vocab"]], Tensor]


def _stop_hook(store: list) -> Callable:
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def hook(resid: Tensor, hook: Any) -> Tensor:
        store.append(resid)
        raise StopAtLayerException(resid)

    return hook


def readout(bridge: Any, resid: Float[Tensor, "rows pos d_model"], answer_pos: Int[Tensor, "batch"]
            ) -> Float[Tensor, "rows d_vocab"]:
    """Final LayerNorm and unembedding at each sequence's answer position only.

    ``rows`` is ``batch`` or a whole number of copies of it (variants stacked along the batch).
    """
    rows = torch.arange(resid.shape[0], device=resid.device)
    final = resid[rows, answer_pos.repeat(resid.shape[0] // answer_pos.shape[0])]  # (rows, d_model)
    return bridge.unembed(bridge.ln_final(final[:, None, :]))[:, 0, :]  # (rows, d_vocab)


def run_to_final(bridge: Any, tokens: Int[Tensor, "batch_in pos"], fwd_hooks: list, answer_pos: Int[Tensor, "batch"],
                 past_key_values: Any = None) -> Float[Tensor, "rows d_vocab"]:
    """One forward with ``fwd_hooks``, stopped before ``ln_final``; answer-position logits.

    ``rows`` is the forward's batch: ``batch_in``, or more where a hook stacks variants' copies.

    With ``past_key_values`` (a Hugging Face cache of earlier positions), ``tokens`` and
    ``answer_pos`` are relative to the end of the cached prefix.
    """
    store: list = []
    hooks = [*fwd_hooks, ("ln_final.hook_in", _stop_hook(store))]
    if past_key_values is None:
        bridge.run_with_hooks(tokens, fwd_hooks=hooks, use_cache=False)
    else:
        bridge.run_with_hooks(tokens, fwd_hooks=hooks, past_key_values=past_key_values)
    return readout(bridge, store[0], answer_pos)


def pos_axis(hook: str) -> int:
    """The position axis of a hook's activation after the batch axis (the query axis for patterns)."""
    return 1 if hook.endswith(("hook_pattern", "hook_attn_scores")) else 0


def _suffix(hook: str, value: Tensor, prefix: int, n_pos: int) -> Tensor:
    """Drop the first ``prefix`` positions of a source tensor when it has a full position axis."""
    dim = pos_axis(hook) + 1
    if prefix and value.ndim > dim and value.shape[dim] == n_pos:
        return value.narrow(dim, prefix, n_pos - prefix)
    return value


def _shift(patch: Patch, prefix: int) -> Patch | None:
    """The patch in suffix coordinates; None when it only touches cached (identical) positions."""
    axis = pos_axis(patch.hook)
    if not prefix or len(patch.index) <= axis or patch.index[axis] is None:
        return patch
    if patch.index[axis] < prefix:
        return None
    index = list(patch.index)
    index[axis] -= prefix
    return Patch(patch.hook, tuple(index), patch.add)


def _expanded_cache(cache: Any, prefix: int, start: int, copies: int, lead: bool = False) -> Any:
    """A copy of a cache cut to ``prefix`` positions, its layers from ``start`` on repeated ``copies`` times.

    With ``lead``, one more copy in front serves the source run riding along (same prefix).
    """
    cache = copy.copy(cache)
    cache.layers = [copy.copy(layer) for layer in cache.layers]
    for i, layer in enumerate(cache.layers):
        reps = (copies if i >= max(start, 0) else 1) + int(lead)
        layer.keys = layer.keys[:, :, :prefix].repeat(reps, 1, 1, 1)  # (batch, head, pos, d) -> (reps*batch, ...)
        layer.values = layer.values[:, :, :prefix].repeat(reps, 1, 1, 1)
    return cache


def capture(bridge: Any, tokens: TokenIds, answer_pos: Int[Tensor, "batch"], hooks: Iterable[str]
            ) -> tuple[dict[str, Tensor], Float[Tensor, "batch d_vocab"]]:
    """Activations at ``hooks`` (by the names given) and the answer-position logits of one run."""
    acts, logits, _ = capture_with_cache(bridge, tokens, answer_pos, hooks, keep_cache=False)
    return acts, logits


def capture_with_cache(bridge: Any, tokens: TokenIds, answer_pos: Int[Tensor, "batch"], hooks: Iterable[str],
                       keep_cache: bool = True) -> tuple[dict[str, Tensor], Float[Tensor, "batch d_vocab"], Any]:
    """:func:`capture`, also returning the run's key/value cache (a prefix cache for :func:`run_variants`)."""
    acts: dict[str, Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(act: Tensor, hook: Any) -> Tensor:
            acts[name] = act.detach().clone()
            return act
        return hook

    names, known = list(dict.fromkeys(hooks)), hook_names(bridge)
    for name in names:
        check_hook(bridge, name, patchable=False, hooks=known)
    cache = None
    if keep_cache:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
    with torch.no_grad():
        logits = run_to_final(bridge, tokens, [(n, keep(n)) for n in names], answer_pos, cache)
    missing = [n for n in names if n not in acts]
    if missing:
        raise ValueError(f"hooks {missing} did not fire on this model (is a setting like use_split_qkv_input off?)")
    return acts, logits, cache


def _expander(batch: int, copies: int, lead: int = 0) -> Callable:
    """Forward pre-hook repeating the target rows of every batch-shaped block input ``copies`` times.

    Rows are ``[lead rows | batch target rows]``; the ``lead`` rows (the source run riding along)
    are kept once.
    """

    def rep(x: Any) -> Any:
        if torch.is_tensor(x) and x.ndim > 1 and x.shape[0] == lead + batch:  # 1-D inputs (cache positions) are not batched
            target = x[lead:].repeat(copies, *([1] * (x.ndim - 1)))  # (batch, ...) -> (copies*batch, ...)
            return torch.cat([x[:lead], target]) if lead else target
        if isinstance(x, tuple):
            return tuple(rep(y) for y in x)
        return x

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple:
        return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}

    return hook


def _selector(patch: Patch, shape: tuple[int, ...]) -> tuple:
    if len(patch.index) > len(shape):
        raise ValueError(f"patch index {patch.index} has more axes than {patch.hook} (shape after batch {shape})")
    for axis, (i, size) in enumerate(zip(patch.index, shape)):
        if i is not None and not 0 <= int(i) < size:
            head_axis = 0 if patch.hook.endswith(("hook_pattern", "hook_attn_scores")) else 1
            what = "head index" if ".attn.hook_" in patch.hook and axis == head_axis else "index"
            raise ValueError(f"{what} {i} on axis {axis + 1} of {patch.hook} is out of range (size {size})")
    return tuple(slice(None) if i is None else int(i) for i in patch.index)


def _patch_hook(name: str, items: list[tuple[int, Patch]], n_variants: int, batch: int, source: Tensor | None,
                lead: int = 0) -> Callable:
    """Hook patching the target rows; ``source=None`` reads the values from the ``lead`` rows (live source run)."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        rest = tuple(act.shape[1:])
        head = act[:lead]  # (lead, ...): the source run, never patched
        view = act[lead:].reshape(n_variants, batch, *rest)  # (variant*batch, ...) -> (variant, batch, ...)
        replace = torch.zeros((n_variants, *rest), dtype=torch.bool, device=act.device)
        add = torch.zeros_like(replace)
        for v, patch in items:
            (add if patch.add else replace)[v][_selector(patch, rest)] = True
        src = (head if source is None else source.to(act.dtype)).unsqueeze(0)  # (1, batch, ...)
        if bool(replace.any()):
            view = torch.where(replace[:, None], src, view)
        if bool(add.any()):
            view = view + add[:, None] * src
        view = view.reshape(n_variants * batch, *rest)
        return torch.cat([head, view]) if lead else view

    return hook


def chunk_size(bridge: Any, batch: int, n_pos: int, memory_mb: float, split_qkv: bool = False) -> int:
    """How many variants fit in one forward under ``memory_mb`` (a rough activation-memory model)."""
    cfg = bridge.cfg
    elt = torch.finfo(getattr(cfg, "dtype", torch.float32)).bits // 8
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    per_seq = elt * n_pos * (12 * cfg.d_model + 2 * d_mlp + 3 * cfg.n_heads * n_pos)
    if split_qkv:
        per_seq += elt * n_pos * 3 * cfg.n_heads * cfg.d_model * 2
    return max(1, int(memory_mb * 2**20 // (batch * per_seq)))


BLOCK_OVERHEAD_FLOP = 1e8  # Python cost of one block in one forward (a few ms on a CPU), in FLOP-equivalents


def _chunks(bridge: Any, order: list[int], first_layer: list[int], size: int, rows_per_variant: int) -> list[list[int]]:
    """Chunks of at most ``size`` variants, by first patched block.

    A variant in a chunk starting at block ``s`` pays for blocks ``s..`` at the expanded batch, so
    variants of a later first block join a chunk only when that extra compute costs less than
    one more forward's per-block overhead (small models); otherwise they start their own chunk.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for i in order:
        groups[first_layer[i]].append(i)
    per_row_block = 24 * bridge.cfg.d_model ** 2  # FLOPs of one position through one block (weights only)
    n_layers = bridge.cfg.n_layers
    chunks: list[list[int]] = []
    current: list[int] = []
    start = 0
    for layer, members in sorted(groups.items()):
        extra = len(members) * rows_per_variant * per_row_block * (layer - start)
        if current and len(current) + len(members) <= size and extra < BLOCK_OVERHEAD_FLOP * (n_layers - max(start, 0)):
            current += members
            continue
        if current:
            chunks.append(current)
        current, start = [], layer
        for j in range(0, len(members), size):
            current = members[j:j + size]
            if j + size < len(members):
                chunks.append(current)
    if current:
        chunks.append(current)
    return chunks


def run_variants(bridge: Any, tokens: TokenIds, answer_pos: Int[Tensor, "batch"], variants: Sequence[Variant],
                 sources: Mapping[str, Tensor], metric: Metric, memory_mb: float = 512.0,
                 progress: bool = False, desc: str = "patching", prefix: int = 0, prefix_cache: Any = None,
                 source_tokens: TokenIds | None = None) -> Tensor:
    """Evaluate ``metric`` on the run of ``tokens`` under each variant's patches, batched.

    Args:
        tokens: the run being patched ``[batch, pos]`` (corrupted tokens when denoising).
        answer_pos: answer position of each prompt ``[batch]``.
        variants: each a list of :class:`Patch` applied together.
        sources: per hook name, the values patched in ``[batch, ...]`` (broadcastable to the activation).
        metric: maps answer-position logits ``[variant, batch, d_vocab]`` to ``[variant, ...]``.
        memory_mb: activation-memory budget of one forward; sets the chunk size.
        prefix: leading positions where the sources equal the target run (the shared prefix of
            clean and corrupted prompts). They are run once into a key/value cache; each batched
            forward then recomputes only the positions after them, and patches inside the prefix
            (exact no-ops) are dropped. Must be 0 when sources differ there (ablations).
        prefix_cache: a key/value cache covering at least ``prefix`` positions of a run on the
            same prefix (e.g. from :func:`capture_with_cache`); computed here when None.
        source_tokens: the source run ``[batch, pos]``; hooks missing from ``sources`` take their
            values from it live: it rides along unpatched in front of every batched forward, so no
            separate caching forward is needed.

    Returns:
        ``[n_variants, ...]`` metric values, in the order of ``variants``.
    """
    batch, n_pos = int(tokens.shape[0]), int(tokens.shape[1])
    prefix = max(0, min(int(prefix), int(answer_pos.min())))
    if prefix:
        variants = [[q for q in (_shift(p, prefix) for p in v) if q is not None] for v in variants]
    _check_sources(bridge, variants, sources, source_tokens is not None)
    first_layer = [_first_layer(bridge, v) for v in variants]
    order = sorted(range(len(variants)), key=lambda i: first_layer[i])
    size = chunk_size(bridge, batch, n_pos, memory_mb, bool(getattr(bridge.cfg, "use_split_qkv_input", False)))
    chunks = _chunks(bridge, order, first_layer, size, batch * (n_pos - prefix))
    lead = 0
    if source_tokens is not None:
        missing = sorted({p.hook for v in variants for p in v} - set(sources))
        if len(chunks) == 1:  # one forward: the source run rides along in front of it
            lead = batch
        elif missing:  # several forwards: cache the source once (and its prefix keys/values)
            captured, _, source_cache = capture_with_cache(bridge, source_tokens, answer_pos, missing)
            sources = {**sources, **captured}
            prefix_cache = source_cache if prefix_cache is None else prefix_cache
    cache = None
    if prefix:
        cache = prefix_cache if prefix_cache is not None else _prefix_cache(bridge, tokens, prefix)
        tokens, answer_pos = tokens[:, prefix:], answer_pos - prefix
        source_tokens = None if source_tokens is None else source_tokens[:, prefix:]
    run = _PatchedRun(bridge, tokens, answer_pos, source_tokens if lead else None, sources, variants, first_layer,
                      metric, prefix, n_pos, cache)
    results: list[Tensor | None] = [None] * len(variants)
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        for i, value in zip(chunk, run.run_chunk(chunk)):
            results[i] = value
    return torch.stack(results)  # type: ignore[arg-type]


def _check_sources(bridge: Any, variants: Sequence[Variant], sources: Mapping[str, Tensor], live_source: bool) -> None:
    """Every patched hook exists and has source values (given, or live from the source run)."""
    known = hook_names(bridge)
    for variant in variants:
        for patch in variant:
            check_hook(bridge, patch.hook, hooks=known)
            if patch.hook not in sources and not live_source:
                raise KeyError(f"no source values for hook {patch.hook!r}")


def _first_layer(bridge: Any, variant: Variant) -> int:
    """The earliest block a variant patches (-1: before the first block; no patch: the last block)."""
    layers = (hook_layer(p.hook) if hook_layer(p.hook) is not None else -1 for p in variant)
    return min(layers, default=bridge.cfg.n_layers - 1)


def _prefix_cache(bridge: Any, tokens: TokenIds, prefix: int) -> Any:
    """Keys/values of the shared prefix ``tokens[:, :prefix]``."""
    with torch.no_grad():
        _, cache = bridge(tokens[:, :prefix], return_type="logits_and_cache")
    return cache


@dataclass
class _PatchedRun:
    """One :func:`run_variants` call's shared inputs; :meth:`run_chunk` runs one chunk of variants in one forward."""

    bridge: Any
    tokens: TokenIds  # (batch, pos after the prefix) the run being patched
    answer_pos: Int[Tensor, "batch"]  # counted after the prefix
    source_tokens: TokenIds | None  # (batch, pos after the prefix) riding along in front, or None
    sources: Mapping[str, Tensor]
    variants: Sequence[Variant]
    first_layer: list[int]
    metric: Metric
    prefix: int
    n_pos: int  # positions including the prefix
    cache: Any  # the prefix's keys/values, or None

    def run_chunk(self, chunk: list[int]) -> Tensor:
        """``metric`` of each variant in ``chunk`` (``[len(chunk), ...]``)."""
        n, batch = len(chunk), int(self.tokens.shape[0])
        lead = batch if self.source_tokens is not None else 0
        per_hook: dict[str, list[tuple[int, Patch]]] = defaultdict(list)
        for v, i in enumerate(chunk):
            for patch in self.variants[i]:
                per_hook[patch.hook].append((v, patch))
        start = min(self.first_layer[i] for i in chunk)
        hooks = [(name, _patch_hook(name, items, n, batch, _suffix(name, self.sources[name], self.prefix, self.n_pos)
                                    if name in self.sources else None, lead))
                 for name, items in per_hook.items()]
        handles = []
        if start < 0:  # a patch before the first block: expand the tokens themselves
            run_tokens = self.tokens.repeat(n, 1)  # (n*batch, pos)
        else:
            run_tokens = self.tokens
            handles = [self.bridge.blocks[layer].register_forward_pre_hook(_expander(batch, n, lead), with_kwargs=True)
                       for layer in range(start, self.bridge.cfg.n_layers)] if n > 1 else []
        if lead:
            run_tokens = torch.cat([self.source_tokens, run_tokens])  # (lead + batch or lead + n*batch, pos)
        past = None if self.cache is None else _expanded_cache(self.cache, self.prefix, start, n, bool(lead))
        try:
            with torch.inference_mode():
                logits = run_to_final(self.bridge, run_tokens, hooks, self.answer_pos, past)  # (rows, d_vocab)
        finally:
            for handle in handles:
                handle.remove()
        return self.metric(logits[lead:].reshape(n, batch, -1))  # (n, ...)
