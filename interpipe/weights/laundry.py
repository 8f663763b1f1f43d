"""Laundry List prompts for the Talking Heads study: item positions, batches, hooked forwards.

A prompt lists ``n`` items, takes all but one out again and asks for the one kept
(:func:`interpipe.data.tasks.laundry_list`)::

    The bag has a cup , a key and a box . I took out the cup and the box and kept the   -> key

The *repeated* items (cup, box) are mentioned twice: once in the list, once where they are taken
out. :class:`LaundryBatch` marks every mention of them (``repeated``) and, separately, their first
mentions (``repeated_first``); the kept item is mentioned once (``answer_pos``).

Forwards run the plain HF model with hooks on the modules
:func:`interpipe.models.arch.describe_architecture` names: a forward pre-hook on a block's attention
output projection reads or edits the per-head ``z``, a forward hook on its attention module (eager
attention) reads the pattern. Prompts are batched by length and only the final positions are
unembedded; a forward that only reads a pattern stops at that layer.
"""

from __future__ import annotations

import random

import torch

from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
from interpipe.weights.common import (StopForward, attention_implementation, attention_module, final_position_logits,
                                      hooked, model_device, z_hook)


def _item_words() -> set[str]:
    from interpipe.data import vocab

    return set(vocab.OBJECTS)


def laundry_positions(tokenizer, prompt: str, answer: str) -> tuple[int, list[int], list[int]]:
    """Token positions of the kept item, of every mention of the repeated items (list and taken-out
    part), and of the repeated items' first mentions (the list part only).

    Positions count the tokens of the prompt prefix before each word (so BPE and word-level
    tokenizers both work; BOS included when the tokenizer adds it).
    """
    list_part = prompt.split(" . ", 1)[0]
    rest = prompt[len(list_part):]
    items = _item_words()
    answer_pos, every, first, offset = None, [], [], 0
    taken = {w for w in rest.split(" ") if w in items}
    for i, word in enumerate(prompt.split(" ")):
        if word in items:
            pos = len(tokenizer(prompt[:offset].rstrip())["input_ids"]) if offset else 0
            in_list = offset < len(list_part)
            if word == answer and in_list:
                answer_pos = pos
            elif word in taken:
                every.append(pos)
                if in_list:
                    first.append(pos)
        offset += len(word) + 1
    if answer_pos is None or not first:
        raise ValueError(f"not a Laundry List prompt (answer {answer!r} or repeated items not found): {prompt[:100]!r}")
    return answer_pos, every, first


def taken_items(prompt: str) -> list[str]:
    """The items a Laundry List prompt takes out again (every list item but the kept one), in order.

    >>> taken_items("The bag has a cup , a key and a box . I took out the box and the cup and kept the")
    ['box', 'cup']
    """
    items = _item_words()
    return [w for w in prompt.split(" . ", 1)[-1].split(" ") if w in items]


class LaundryBatch:
    """Encoded Laundry List prompts: ids (batch, pos), final positions, answer ids, list lengths,
    the kept item's position and masks (batch, pos) of the repeated items' mentions; ``foils``
    (batch, max taken) the taken-out items' answer-token ids, ``foil_mask`` where they are real."""

    def __init__(self, tokenizer, model, rows: list[dict]):
        self.rows, self.tokenizer, self.model = rows, tokenizer, model
        self.ids, _, self.last = encode_prompts(tokenizer, [r["prompt"] for r in rows], context_length(model))
        self.answers = torch.tensor([answer_token_id(tokenizer, r["answer"]) for r in rows])
        taken = [[answer_token_id(tokenizer, w) for w in taken_items(r["prompt"])] for r in rows]
        width = max(map(len, taken), default=0)
        self.foils = torch.tensor([t + [0] * (width - len(t)) for t in taken], dtype=torch.long).reshape(len(rows), width)
        self.foil_mask = torch.tensor([[True] * len(t) + [False] * (width - len(t)) for t in taken]).reshape(len(rows), width)
        self.lengths = torch.tensor([int(r["n_items"]) for r in rows])
        pos = [laundry_positions(tokenizer, r["prompt"], r["answer"]) for r in rows]
        self.answer_pos = torch.tensor([p[0] for p in pos])
        self.repeated = torch.zeros_like(self.ids, dtype=torch.bool)  # (batch, pos): every mention
        self.repeated_first = torch.zeros_like(self.ids, dtype=torch.bool)  # (batch, pos): list mentions only
        for i, (_, every, first) in enumerate(pos):
            self.repeated[i, every] = True
            self.repeated_first[i, first] = True

    def subset(self, keep: torch.Tensor) -> "LaundryBatch":
        """The prompts where the boolean ``keep`` (batch,) holds, as a batch of their own."""
        return LaundryBatch(self.tokenizer, self.model, [r for r, k in zip(self.rows, keep.tolist()) if k])


def laundry_rows(lengths: list[int], n_per_length: int, seed_name: str, exclude: set[str] = frozenset(),
                 max_len: int | None = None, tokenizer=None) -> list[dict]:
    """``n_per_length`` distinct Laundry List prompts per length from the prepare stage's generator,
    drawn with ``random.Random(seed_name)`` and none of whose keys is in ``exclude`` (a length whose
    prompts exceed ``max_len`` tokens is dropped)."""
    from interpipe.data import tasks

    rng, rows, seen = random.Random(seed_name), [], set(exclude)
    for n in lengths:
        got, tries = 0, 0
        while got < n_per_length and tries < 200 * n_per_length:
            tries += 1
            row = tasks.laundry_list(rng, n_items=n)
            if row["key"] in seen:
                continue
            if max_len is not None and tokenizer is not None and len(tokenizer(row["prompt"])["input_ids"]) > max_len:
                break  # too long for this model's context: drop the length
            seen.add(row["key"])
            rows.append(row)
            got += 1
    return rows


def _chunks(batch: LaundryBatch, batch_size: int) -> list[torch.Tensor]:
    """Row indices in chunks of ``batch_size`` prompts of similar length (less padding per forward)."""
    order = torch.argsort(batch.last, stable=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _pattern_hook(store: dict, layer: int, read, stop: bool):
    """A forward hook on an attention module storing ``read(pattern)``; ``stop`` ends the forward there."""
    def hook(module, args, output):
        pattern = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if pattern is None or pattern.dim() != 4:
            raise RuntimeError(f"{type(module).__name__} returned no attention weights; it needs eager attention")
        store[layer] = read(pattern.float().cpu())  # pattern: (batch, head, q_pos, k_pos)
        if stop:
            raise StopForward
    return hook


@torch.inference_mode()
def laundry_forward(model, spec, batch: LaundryBatch, batch_size: int, edits=(), readers=None, logits: bool = True):
    """One pass of the HF ``model`` over ``batch`` in length-sorted chunks.

    Args:
        edits: ``(layer, edit)`` pairs, ``edit(z) -> z`` on the per-head ``z`` (batch, pos, head, d_head)
            that ``layer``'s output projection reads.
        readers: ``{layer: read(pattern, rows)}`` reading ``layer``'s attention pattern (eager attention)
            for the batch rows ``rows`` of the chunk.
        logits: ``False`` stops every forward after the last read layer's attention.

    Returns (final-position logits (batch, d_vocab) or None, ``{layer: reads (batch, ...)}``), in row order.
    """
    readers, chunks = readers or {}, _chunks(batch, batch_size)
    stop = None if logits or not readers else max(readers)
    pre = {spec.blocks[layer].attn_out: z_hook(spec, edit) for layer, edit in edits}
    out, reads = [], {layer: [] for layer in readers}
    with attention_implementation(model, "eager" if readers else model.config._attn_implementation):
        for rows in chunks:
            store = {}
            post = {attention_module(spec, layer): _pattern_hook(store, layer, lambda p, fn=fn, rows=rows: fn(p, rows), layer == stop)
                    for layer, fn in readers.items()}
            with hooked(model, pre=pre, post=post):
                out.append(_chunk_logits(model, spec, batch.ids[rows], batch.last[rows], logits))
            for layer in readers:
                reads[layer].append(store[layer])
    inverse = torch.argsort(torch.cat(chunks))
    return (torch.cat(out)[inverse] if logits else None), {layer: torch.cat(r)[inverse] for layer, r in reads.items()}


def _chunk_logits(model, spec, ids: torch.Tensor, last: torch.Tensor, logits: bool) -> torch.Tensor | None:
    if logits:
        return final_position_logits(model, spec, ids, last).float().cpu()  # (b, V)
    try:
        model(input_ids=ids[:, :int(last.max()) + 1].to(model_device(model)))
    except StopForward:
        pass
    return None


def run_laundry(model, spec, batch: LaundryBatch, batch_size: int, edits=(), receiver: tuple[int, int] | None = None,
                logits: bool = True):
    """Final-position logits (batch, d_vocab) (None with ``logits=False``: each forward stops at the
    receiver's attention) and, with ``receiver``, its attention from the final position (batch, k_pos)."""
    if receiver is None:
        return laundry_forward(model, spec, batch, batch_size, edits)[0], None
    layer, head = receiver
    width = batch.ids.shape[1]

    def read(p, rows):  # p: (b, head, q_pos, k_pos) of the chunk, k_pos cut to the chunk's longest prompt
        attn = p[torch.arange(len(rows)), head, batch.last[rows]]  # (b, k_pos)
        return torch.nn.functional.pad(attn, (0, width - attn.shape[1]))

    out, reads = laundry_forward(model, spec, batch, batch_size, edits, {layer: read}, logits)
    return out, reads[layer]


def hf_final_logits(model, batch: LaundryBatch, batch_size: int) -> torch.Tensor:
    """Final-position logits (batch, d_vocab) of a plain HF model, without edits."""
    from interpipe.models.arch import describe_architecture

    return run_laundry(model, describe_architecture(model), batch, batch_size)[0]


def correct(logits: torch.Tensor, batch: LaundryBatch) -> torch.Tensor:
    """Per-prompt correctness (batch,) as floats: the top final-position token is the kept item."""
    return (logits.argmax(-1) == batch.answers).float()


def item_margin(logits: torch.Tensor, batch: LaundryBatch) -> torch.Tensor:
    """Per-prompt logit difference (batch,), float32: the kept item's logit minus the largest logit of
    the items taken out. Continuous where accuracy moves in steps of one prompt; positive when the kept
    item beats every listed distractor (the task's own foils)."""
    logits = logits.float()  # (batch, d_vocab)
    answer = logits.gather(1, batch.answers[:, None])[:, 0]  # (batch,)
    foils = logits.gather(1, batch.foils).masked_fill(~batch.foil_mask, float("-inf"))  # (batch, max taken)
    return answer - foils.max(1).values
