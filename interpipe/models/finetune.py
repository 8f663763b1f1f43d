"""Fine-tune a sequence classifier (e.g. MiniLM with a fresh head) on a labelled embedded task.

The attribution study's encoder model is all-MiniLM-L6-v2 with a classification head trained
here on the ``sentiment`` task (planted positive/negative cue words, label 1 = positive), so the
gold cue positions of every held-out example are known. Plain AdamW with linear decay over a
fixed number of steps; deterministic on CPU for a fixed seed.
"""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from interpipe.divergence import DivergenceGuard
from interpipe.settings.models import FinetuneSettings


def _labels(rows: list[dict]) -> list[int]:
    labels = [int(r["label"]) for r in rows]
    if any(label < 0 for label in labels):
        raise ValueError("fine-tuning needs labelled rows (label >= 0): use a classification task such as sentiment")
    return labels


@torch.no_grad()
def classifier_accuracy(model, tokenizer, rows: list[dict], max_length: int = 32, batch_size: int = 64) -> float:
    """Accuracy of ``model`` on ``rows`` (``prompt`` -> ``label``)."""
    model.eval()
    labels = _labels(rows)
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(rows), batch_size):
        enc = tokenizer([r["prompt"] for r in rows[i:i + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        pred = model(**enc).logits.argmax(-1).cpu()
        correct += int((pred == torch.tensor(labels[i:i + batch_size])).sum())
    return correct / len(rows)


def finetune_classifier(model, tokenizer, rows: list[dict], settings: FinetuneSettings | None = None):
    """Fine-tune an ``AutoModelForSequenceClassification`` on ``rows`` (text = ``prompt``).

    Returns ``(model in eval mode, curve: [{"step", "loss", "accuracy"}], seconds)``; the
    accuracy in the curve is the running training-batch accuracy.
    """
    s = settings or FinetuneSettings()
    if not rows:
        raise ValueError("no training rows for fine-tuning")
    if getattr(model.config, "num_labels", 0) < 2:
        raise ValueError("fine-tuning needs a classification head with num_labels >= 2")
    rows = rows[: s.n_train]
    labels = torch.tensor(_labels(rows))
    if labels.max() >= model.config.num_labels:
        raise ValueError(f"labels up to {int(labels.max())} but the head has {model.config.num_labels} classes")
    device = next(model.parameters()).device
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    order: list[int] = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / s.steps)
    curve: list[dict] = []
    window_loss, window_correct, window_n = 0.0, 0, 0
    start = time.perf_counter()
    guard = DivergenceGuard("classifier fine-tuning", f"lower model.finetune.lr (now {s.lr})")
    model.train()
    for step in tqdm(range(1, s.steps + 1), desc=guard.loop):
        if len(order) < s.batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[: s.batch_size], order[s.batch_size:]
        enc = tokenizer([rows[i]["prompt"] for i in idx], padding=True, truncation=True, max_length=s.max_length,
                        return_tensors="pt").to(device)
        target = labels[idx].to(device)
        logits = model(**enc).logits
        loss = torch.nn.functional.cross_entropy(logits, target)
        value = guard.loss(step, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        guard.gradients(step, model.parameters())
        optimizer.step()
        schedule.step()
        window_loss += value * len(idx)
        window_correct += int((logits.argmax(-1) == target).sum())
        window_n += len(idx)
        if step % s.log_every == 0 or step == s.steps:
            curve.append({"step": step, "loss": window_loss / window_n, "accuracy": window_correct / window_n})
            window_loss, window_correct, window_n = 0.0, 0, 0
    model.eval()
    return model, curve, time.perf_counter() - start
