"""Token-level helpers shared by every study: answer ids, prompt encoding, context checks."""

from __future__ import annotations

import torch

from interpipe.typing import Int, Tensor


def answer_token_id(tokenizer, word: str, first_of_many: bool = False) -> int:
    """The id of the single token that continues a prompt with ``word``: the one answer rule of every study.

    GPT-2-style BPE tokenizers get a leading space (``" Mary"``); word-level tokenizers split on
    whitespace and see ``"Mary"``. Words that are several tokens raise ``ValueError`` naming them,
    unless ``first_of_many`` (token attribution, whose answer only scores first-token accuracy)
    takes their first token.

    >>> class WordTok:
    ...     def encode(self, text, add_special_tokens=False):
    ...         return [{"Mary": 7}[w] for w in text.split()]
    >>> answer_token_id(WordTok(), "Mary")
    7
    """
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    if first_of_many and ids:
        return int(ids[0])
    if len(ids) != 1:
        raise ValueError(f"answer {word!r} is {len(ids)} tokens for this tokenizer ({ids}); "
                         f"single-token answers are required — choose tasks/words that tokenize to one token")
    return int(ids[0])


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` itself puts its BOS token first (the rule the model was trained with).

    Every study follows this rule and adds no BOS of its own: the toy's tokenizer prepends one,
    SmolLM2's does not.

    >>> class NoBos:
    ...     bos_token_id = 1
    ...     def __call__(self, text):
    ...         return {"input_ids": [7]}
    >>> adds_bos(NoBos())
    False
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and int(ids[0]) == int(bos)


def with_first_token(tokenizer, token: str):
    """A copy of ``tokenizer`` that puts ``token`` first in every encoding (``add_special_tokens``
    calls: texts and prompts; answers are encoded without it), saved with the tokenizer so a stock
    ``AutoTokenizer`` reload does the same. A tokenizer that already starts every text with ``token``
    is returned unchanged.

    The LN-removal recipe needs one fixed token at position 0 (the official GPT-2 run puts
    ``<|endoftext|>`` there): that position's scale is then the same on every text, so its own frozen
    scale is exact. A model trained without one (SmolLM2) makes whatever word comes first its
    attention sink, whose scale changes with the word.
    """
    import copy

    from tokenizers import processors

    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None) and token != tokenizer.unk_token:
        raise ValueError(f"first token {token!r} is not in the tokenizer's vocabulary; name one of its special "
                         f"tokens (e.g. {tokenizer.all_special_tokens[:4]})")
    if tokenizer("a")["input_ids"][:1] == [token_id]:
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"a first token can only be set on a fast (tokenizers-backed) tokenizer, not "
                         f"{type(tokenizer).__name__}; set the first-token setting to null")
    out = copy.deepcopy(tokenizer)
    out.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A $B", special_tokens=[(token, int(token_id))])
    return out


def pad_encode(tokenizer, texts: list[str], padding_side: str = "right",
               max_length: int | None = None) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Tokenize ``texts`` (truncated to ``max_length`` when given) and pad them to the longest,
    leaving the tokenizer as it was (HF padding needs ``pad_token`` / ``padding_side`` set on it).

    Pads with the tokenizer's pad token, or its EOS token when it has none (as GPT-2-style causal
    LMs are run). Returns ``(input_ids, attention_mask)``.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad a batch with; set tokenizer.pad_token")
    rows = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)["input_ids"]
    return pad_rows(rows, int(pad), padding_side)


def pad_rows(rows, pad: int, padding_side: str = "right") -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token id rows of different lengths (lists or 1-D tensors) padded with ``pad`` to the longest:
    ``(input_ids, attention_mask)``, the mask 1 on each row's own tokens."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r} is not 'right' or 'left'")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)  # (batch, pos)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, pos)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        ids[i, span] = torch.as_tensor(row, dtype=torch.long).cpu()
        mask[i, span] = 1
    return ids, mask


def encode_prompts(tokenizer, prompts: list[str], max_len: int | None, padding_side: str = "right"):
    """Tokenize prompts into a padded batch; raise naming the first prompt that is too long.

    Returns ``(input_ids, attention_mask, last_index)`` with shapes (batch, pos), (batch, pos)
    and (batch,) — ``last_index`` is each prompt's final real position.
    """
    if not prompts:
        raise ValueError("no prompts to encode: the dataset is empty")
    ids, mask = pad_encode(tokenizer, list(prompts), padding_side)  # (batch, pos) each
    lengths = mask.sum(1)
    if max_len is not None and int(lengths.max()) > max_len:
        worst = int(lengths.argmax())
        raise ValueError(f"prompt {worst} is {int(lengths[worst])} tokens, longer than the model's context "
                         f"of {max_len}: {prompts[worst][:120]!r}")
    if padding_side == "right":
        last = lengths - 1
    else:
        last = torch.full_like(lengths, ids.shape[1] - 1)
    return ids, mask, last


def context_length(model) -> int | None:
    """The model's maximum number of positions, if its config says."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if value:
            return int(value)
    return None
