"""The embedded toy model: a small GPT-2-architecture causal LM trained here from scratch.

It gets a word-level tokenizer built from the prepared corpus (every word one token, so names,
colours and objects are single tokens as in the circuit literature) and is trained with
next-token cross-entropy, the answer token up-weighted, on the task corpus, several texts packed
per row (:mod:`interpipe.models.packing`). Training runs on ``settings.threads`` CPU threads (one by
default): float sums depend on the thread count, and the toy's IOI phase change is sensitive to
that noise, so a fixed count gives the same weights on every machine for the same config.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from interpipe.divergence import DivergenceGuard
from interpipe.models.packing import pack, packed_loss
from interpipe.settings.models import ToySettings

BOS = "<|endoftext|>"
PAD = "<pad>"
UNK = "<unk>"


def build_tokenizer(texts: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` over every word in ``texts`` (plus BOS/PAD/UNK)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()})
    vocab = {tok: i for i, tok in enumerate([BOS, PAD, UNK] + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=BOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="right")


def build_model(settings: ToySettings, vocab_size: int, bos_id: int, pad_id: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(settings.seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=settings.n_positions, n_embd=settings.n_embd,
                        n_layer=settings.n_layer, n_head=settings.n_head, bos_token_id=bos_id,
                        eos_token_id=bos_id, pad_token_id=pad_id, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, tie_word_embeddings=True)
    config.architectures = ["GPT2LMHeadModel"]
    return GPT2LMHeadModel(config)


def _encode(tokenizer, texts: list[str], n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]  # (N, T)
    if ids.shape[1] > n_ctx:
        raise ValueError(f"a training text is {ids.shape[1]} tokens, longer than n_positions={n_ctx}; raise model.toy.n_positions")
    return ids, mask


def lr_at(step: int, s: ToySettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validation_loss(model, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 128) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        b_ids, b_mask = ids[i:i + batch_size], mask[i:i + batch_size]
        labels = b_ids.masked_fill(b_mask == 0, -100)
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(input_ids=b_ids, attention_mask=b_mask, labels=labels).loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def train_toy(train_texts: Sequence[str], val_texts: Sequence[str], settings: ToySettings,
              vocab_texts: Sequence[str] | None = None, on_validation=None):
    """Train the toy GPT-2 on ``train_texts``; returns ``(model, tokenizer, curve, seconds)``.

    ``curve`` is a list of ``{"step", "loss", "val_loss", "lr"}`` dicts. ``on_validation``, if
    given, is called as ``on_validation(step, model, tokenizer) -> dict`` at every validation
    point and its numbers are added to the curve (e.g. task accuracies during training).
    """
    if not train_texts:
        raise ValueError("the training corpus is empty; run the prepare stage with n_train > 0")
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _train(list(train_texts), list(val_texts), settings, list(vocab_texts or []), on_validation)
    finally:
        torch.set_num_threads(threads)


def _train(train_texts: list[str], val_texts: list[str], settings: ToySettings, vocab_texts: list[str],
           on_validation):
    tokenizer = build_tokenizer(vocab_texts + train_texts + val_texts)
    model = build_model(settings, len(tokenizer), tokenizer.bos_token_id, tokenizer.pad_token_id)
    ids, mask = _encode(tokenizer, train_texts, settings.n_positions)  # (N, T)
    lengths = mask.sum(1).tolist()  # real tokens per text (right padding)
    val_ids, val_mask = _encode(tokenizer, val_texts, settings.n_positions)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(settings.seed)
    model.train()
    curve: list[dict] = []
    start = time.perf_counter()
    running = 0.0
    guard = DivergenceGuard("toy GPT-2 training", f"lower model.toy.lr (now {settings.lr}) or raise "
                                                  f"model.toy.warmup_steps (now {settings.warmup_steps})")
    bar = tqdm(range(settings.steps), desc=guard.loop)
    for step in bar:
        batch = torch.randint(0, len(ids), (settings.batch_size,), generator=gen)
        packed = pack([ids[i, :lengths[i]] for i in batch.tolist()], settings.n_positions,
                      tokenizer.pad_token_id, settings.answer_weight)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                       attention_mask=packed.attention_mask).logits  # (R, T, V)
        loss = packed_loss(logits, packed)
        running += guard.loss(step + 1, loss)  # steps counted from 1, as in the curve
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.gradients(step + 1, model.parameters(), clip=1.0)
        opt.step()
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            n = settings.log_every if (step + 1) % settings.log_every == 0 else (step + 1) % settings.log_every
            point = {"step": step + 1, "loss": running / n, "lr": lr_at(step, settings)}
            running = 0.0
            if step + 1 == settings.steps or (step + 1) % (settings.log_every * 4) == 0:
                point["val_loss"] = validation_loss(model, val_ids, val_mask)
                if on_validation is not None:
                    model.eval()
                    point.update(on_validation(step + 1, model, tokenizer))
                    model.train()
            curve.append(point)
            bar.set_postfix(loss=f"{point['loss']:.3f}")
    model.eval()
    return model, tokenizer, curve, time.perf_counter() - start
