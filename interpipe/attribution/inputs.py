"""Encoded inputs for attribution: one padded batch with targets, scoring positions and cue masks.

A causal LM is read at the last prompt token (its next-token prediction is the task answer);
a sequence classifier is read through its own pooled head.

The causal-LM protocol. In a causal LM ``LogAt(x_i)`` is the target's logit *after* position
``i``, so at the scored (last) position it is the prediction itself and NormXLogit ranks that
position first by construction. By default (``scored_position="exclude"``) it is kept out of
ranking and removal, as the paper keeps [CLS] out for its classifiers: the scored position is
where the output is read, not evidence for it, and removing it would move the read-out itself.
By default (``causal_target="contrast"``) the scored output is the answer's logit minus the
foil's (``foil_ids``: the task's competing word, by the one answer rule
:func:`interpipe.models.tokens.answer_token_id`), as contrastive attribution does (Yin & Neubig,
"Interpreting Language Models with Contrastive Explanations", EMNLP 2022); ``"answer"`` scores
the answer alone (``foil_ids`` all -1).
``"rank"`` ranks and removes it like any other token (the earlier behaviour). Either way every
method still scores it, and integrated gradients still integrates over it. Everything that can be wrong with
an input (empty rows, empty prompts, prompts longer than the model, an answer the tokenizer
cannot encode, a target outside the output space) is rejected here, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from interpipe.models.tokens import answer_token_id, pad_rows
from interpipe.typing import Int, Tensor

from jaxtyping import Bool


@dataclass
class Batch:
    """Right-padded token ids plus everything the methods and the evaluator need."""

    example_ids: list[str]
    tasks: list[str]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    eligible: Bool[Tensor, "batch pos"]  # real, non-special tokens: the ones ranked and removed
    cue_mask: Bool[Tensor, "batch pos"]  # tokens overlapping a gold cue span
    score_pos: Int[Tensor, "batch"]  # position whose output is scored (last prompt token / 0)
    target_ids: Int[Tensor, "batch"]  # token or class scored; -1 = the model's prediction
    gold_ids: Int[Tensor, "batch"]  # correct answer token or label, for accuracy
    tokens: list[list[str]] = field(default_factory=list)  # unpadded token strings
    attributable: Bool[Tensor, "batch pos"] | None = None  # real, non-special tokens (eligible plus a kept-out scored position)
    foil_ids: Int[Tensor, "batch"] | None = None  # contrastive target: the foil whose logit is subtracted; -1 = none

    def __post_init__(self) -> None:
        if self.attributable is None:
            self.attributable = self.eligible.clone()
        if self.foil_ids is None:
            self.foil_ids = torch.full_like(self.target_ids, -1)

    def __len__(self) -> int:
        return len(self.example_ids)

    def select(self, index: slice | list[int]) -> "Batch":
        """Rows ``index`` of the batch (tensors and lists alike)."""
        idx = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        t = torch.tensor(idx, dtype=torch.long)
        pick = lambda x: x.index_select(0, t.to(x.device))  # noqa: E731
        return replace(self, example_ids=[self.example_ids[i] for i in idx], tasks=[self.tasks[i] for i in idx],
                       input_ids=pick(self.input_ids), attention_mask=pick(self.attention_mask),
                       eligible=pick(self.eligible), cue_mask=pick(self.cue_mask), score_pos=pick(self.score_pos),
                       target_ids=pick(self.target_ids), gold_ids=pick(self.gold_ids),
                       tokens=[self.tokens[i] for i in idx], attributable=pick(self.attributable),
                       foil_ids=pick(self.foil_ids))

    def to(self, device: torch.device | str) -> "Batch":
        move = {k: getattr(self, k).to(device) for k in ("input_ids", "attention_mask", "eligible", "cue_mask",
                                                          "score_pos", "target_ids", "gold_ids", "attributable", "foil_ids")}
        return replace(self, **move)


def encode_rows(tokenizer, rows: list[dict], kind: str, max_length: int, target: str = "predicted",
                scored_position: str = "exclude", causal_target: str = "answer") -> Batch:
    """Encode task records (``interpipe.data`` fields) into one right-padded :class:`Batch`.

    ``kind`` is ``causal_lm`` (target = the answer token at the last prompt position) or
    ``sequence_classifier`` (target = the predicted class, or ``label`` when ``target="label"``).
    ``scored_position`` (causal LMs): ``exclude`` keeps the predicting position out of ranking
    and removal, ``rank`` treats it as any token (see the module docstring). ``causal_target``
    (causal LMs): ``contrast`` also encodes each row's ``foil`` (answer − foil logit difference),
    ``answer`` scores the answer alone.
    """
    if causal_target not in ("contrast", "answer"):
        raise ValueError(f"causal_target={causal_target!r} is not one of ('contrast', 'answer')")
    if scored_position not in ("exclude", "rank"):
        raise ValueError(f"scored_position={scored_position!r} is not one of ('exclude', 'rank')")
    if kind not in ("causal_lm", "sequence_classifier"):
        raise ValueError(f"attribution needs a model with a head (causal_lm or sequence_classifier), got kind={kind!r}")
    if not rows:
        raise ValueError("no examples to attribute: the task split is empty or attribute.n_examples selects none")
    encoded, tokens = _tokenize(tokenizer, rows, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention, eligible, cue = _padded(rows, encoded, pad_id)
    attributable = eligible.clone()
    score_pos, gold, targets = _targets(tokenizer, rows, kind, target, attention.sum(1))
    if kind == "causal_lm" and scored_position == "exclude":
        eligible[torch.arange(len(rows)), score_pos] = False
        if not eligible.any(1).all():
            bad = [rows[b]["example_id"] for b in torch.nonzero(~eligible.any(1)).flatten().tolist()]
            raise ValueError(f"examples {bad} have no token besides the scored position; "
                             f"use longer prompts or attribute.scored_position=rank")
    foils = _foils(tokenizer, rows, gold) if kind == "causal_lm" and causal_target == "contrast" else None
    return Batch(example_ids=[str(r["example_id"]) for r in rows], tasks=[str(r.get("task", "")) for r in rows],
                 input_ids=input_ids, attention_mask=attention, eligible=eligible, cue_mask=cue,
                 score_pos=score_pos, target_ids=targets, gold_ids=gold, tokens=tokens, attributable=attributable,
                 foil_ids=foils)


def _tokenize(tokenizer, rows: list[dict], max_length: int) -> tuple[list, list[list[str]]]:
    """Each prompt's encoding (with offsets and the special-token mask) and its token strings."""
    encoded, tokens = [], []
    for row in rows:
        if not str(row["prompt"]).strip():
            raise ValueError(f"example {row['example_id']} has an empty prompt")
        enc = tokenizer(row["prompt"], return_offsets_mapping=True, return_special_tokens_mask=True)
        if len(enc["input_ids"]) > max_length:
            raise ValueError(f"example {row['example_id']} is {len(enc['input_ids'])} tokens long, over "
                             f"attribute.max_length={max_length}; raise it (up to the model's context) or shorten it")
        encoded.append(enc)
        tokens.append(tokenizer.convert_ids_to_tokens(enc["input_ids"]))
    return encoded, tokens


def _padded(rows: list[dict], encoded: list, pad_id: int):
    """Right-padded (batch, pos) ids, attention mask, attributable (non-special) tokens and cue tokens."""
    input_ids, attention = pad_rows([e["input_ids"] for e in encoded], pad_id)  # (batch, pos) each
    eligible = torch.zeros(input_ids.shape, dtype=torch.bool)
    cue = torch.zeros(input_ids.shape, dtype=torch.bool)
    for b, (row, enc) in enumerate(zip(rows, encoded)):
        length = len(enc["input_ids"])
        special = torch.tensor(enc["special_tokens_mask"], dtype=torch.bool)
        eligible[b, :length] = ~special
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if not special[i] and any(start < s_end and end > s_start for s_start, s_end in row["cue_spans"]):
                cue[b, i] = True
        if not eligible[b].any():
            raise ValueError(f"example {row['example_id']} has no non-special tokens to attribute")
    return input_ids, attention, eligible, cue


def _targets(tokenizer, rows: list[dict], kind: str, target: str, lengths: torch.Tensor):
    """(batch,) scored position, gold id and attribution target (-1: the model's own prediction)."""
    n = len(rows)
    if kind == "causal_lm":
        score_pos = lengths - 1  # (batch,) last prompt token predicts the answer
        gold = torch.tensor([answer_token_id(tokenizer, row["answer"], first_of_many=True) for row in rows])
        return score_pos, gold, gold.clone()
    score_pos = torch.zeros(n, dtype=torch.long)  # the pooled [CLS] position
    gold = torch.tensor([int(row["label"]) for row in rows])
    if target == "label" and (gold < 0).any():
        raise ValueError("attribute.target=label needs labelled rows (label >= 0); use a classification task")
    return score_pos, gold, gold.clone() if target == "label" else torch.full((n,), -1, dtype=torch.long)


def _foils(tokenizer, rows: list[dict], answers: Int[Tensor, "batch"]) -> Int[Tensor, "batch"]:
    """(batch,) each row's foil id by the answer rule; a row without a foil, or whose foil is its answer, is an error."""
    missing = [r["example_id"] for r in rows if not str(r.get("foil") or "").strip()]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no foil for the contrastive target; "
                         f"use attribute.causal_target=answer or a task with foils (ioi, sva)")
    foils = torch.tensor([answer_token_id(tokenizer, row["foil"], first_of_many=True) for row in rows])
    same = [rows[b]["example_id"] for b in torch.nonzero(foils == answers).flatten().tolist()]
    if same:
        raise ValueError(f"examples {same[:5]}: the foil's first token is the answer's; the logit difference is 0")
    return foils
