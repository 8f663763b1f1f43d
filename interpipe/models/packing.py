"""Sequence packing for the toy model's training: several texts per row, none seeing another.

Padding a batch of texts to its longest row wastes most of a step on the toy corpus (texts
average ~20 tokens, a batch's longest ~37). Packing puts the texts of a batch into rows of
``n_ctx`` tokens, with position ids restarting at 0 for each text and a block-diagonal causal
attention mask, so every text is computed exactly as if it were alone in its row (the
logits equal the unpacked forward's; ``tests/foundation/test_models.py`` checks it) at about
half the tokens. The loss weights are the unpacked ones: 1 per next-token target, ``answer_weight``
for each text's last target (its task answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (R, T) texts laid end to end, pad after the last
    position_ids: torch.Tensor  # (R, T) 0.. within each text
    attention_mask: torch.Tensor  # (R, 1, T, T) bool: query attends to key (same text, not later)
    targets: torch.Tensor  # (R, T) next token within the same text (0 where none)
    weights: torch.Tensor  # (R, T) loss weight of each target (0 where none)


def pack(texts: list[torch.Tensor], n_ctx: int, pad_id: int, answer_weight: float) -> PackedBatch:
    """First-fit pack 1-D token tensors into rows of at most ``n_ctx`` tokens."""
    rows: list[list[torch.Tensor]] = []
    room: list[int] = []
    for t in texts:
        if len(t) > n_ctx:
            raise ValueError(f"a text of {len(t)} tokens does not fit n_ctx={n_ctx}")
        slot = next((i for i, r in enumerate(room) if r >= len(t)), None)
        if slot is None:
            rows.append([])
            room.append(n_ctx)
            slot = len(rows) - 1
        rows[slot].append(t)
        room[slot] -= len(t)
    width = max(n_ctx - r for r in room)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # -1: padding
    targets = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width))
    for r, row in enumerate(rows):
        start = 0
        for s, t in enumerate(row):
            end = start + len(t)
            ids[r, start:end] = t
            pos[r, start:end] = torch.arange(len(t))
            segment[r, start:end] = s
            if len(t) > 1:
                targets[r, start:end - 1] = t[1:]
                weights[r, start:end - 1] = 1.0
                weights[r, end - 2] = answer_weight
            start = end
    same = segment[:, :, None] == segment[:, None, :]  # (R, T, T)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    # padding attends to itself only, so no row of the mask is empty
    mask = (same & causal & (segment[:, :, None] >= 0)) | torch.eye(width, dtype=torch.bool)
    return PackedBatch(ids, pos, mask[:, None], targets, weights)


def packed_loss(logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Weighted next-token cross-entropy of ``logits`` (R, T, V) on a packed batch."""
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # (R, T)
    return (ce * batch.weights).sum() / batch.weights.sum()
