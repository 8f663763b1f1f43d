"""Task evaluation of a model folder: loss, accuracy and logit difference per task.

- Causal LMs: the prompt's last position predicts the answer word. ``loss`` is the answer's
  cross-entropy, ``accuracy`` whether it is the top-1 token, ``logit_diff`` the mean of
  logit(answer) − logit(foil).
- Sequence classifiers: the class logits; answer/foil are the label names of the task
  (``positive``/``negative`` for ``sentiment``).
- Plain encoders (no head): a nearest-centroid probe on mean-pooled embeddings, centroids from
  the task's training split; logits are cosine similarities to the class centroids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from interpipe.data import load_task
from interpipe.models import load_model
from interpipe.models.tokens import answer_token_id, context_length, encode_prompts

CLASSIFICATION_TASKS = ("sentiment",)


@torch.no_grad()
def _batched(model, tokenizer, texts: Sequence[str], batch_size: int, device, read) -> torch.Tensor:
    """Run ``texts`` through ``model`` in padded batches; ``read(output, mask, last) -> (B, ...)``."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask, last = encode_prompts(tokenizer, texts[i:i + batch_size], context_length(model))
        mask, last = mask.to(device), last.to(device)
        out.append(read(model(input_ids=ids.to(device), attention_mask=mask), mask, last).float().cpu())
    return torch.cat(out)


def _last_logits(output, mask, last) -> torch.Tensor:
    return output.logits[torch.arange(len(last)), last]  # (B, T, V) -> (B, V)


def _class_logits(output, mask, last) -> torch.Tensor:
    return output.logits  # (B, C)


def _mean_pooled(output, mask, last) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()  # (B, T, 1)
    return (output.last_hidden_state * m).sum(1) / m.sum(1)  # (B, D)


def _embeddings(model, tokenizer, texts: Sequence[str], batch_size: int, device) -> torch.Tensor:
    pooled = _batched(model, tokenizer, texts, batch_size, device, _mean_pooled)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _scores(logits: torch.Tensor, answers: torch.Tensor, foils: torch.Tensor) -> dict[str, float]:
    """``logits`` (N, C); ``answers``/``foils`` (N,) class or token ids."""
    idx = torch.arange(len(answers))
    return {
        "loss": float(torch.nn.functional.cross_entropy(logits, answers)),
        "accuracy": float((logits.argmax(-1) == answers).float().mean()),
        "logit_diff": float((logits[idx, answers] - logits[idx, foils]).mean()),
    }


def evaluate_task(loaded, data_root: str | Path, task: str, batch_size: int = 64, device: str = "cpu",
                  by_length: bool = True) -> dict[str, float]:
    """Metrics of one loaded model on one task's held-out split."""
    rows = load_task(data_root, task, "test")
    kind = loaded.card.kind
    model, tok = loaded.model, loaded.tokenizer
    if kind == "causal_lm":
        logits = _batched(model, tok, rows["prompt"], batch_size, device, _last_logits)
        answers = torch.tensor([answer_token_id(tok, w) for w in rows["answer"]])
        foils = torch.tensor([answer_token_id(tok, w) for w in rows["foil"]])
    elif task not in CLASSIFICATION_TASKS:
        raise ValueError(f"task {task!r} needs a causal LM; {loaded.card.name} is a {kind}. "
                         f"Classification tasks: {CLASSIFICATION_TASKS}")
    else:
        labels = torch.tensor(rows["label"])
        answers, foils = labels, 1 - labels
        if kind == "sequence_classifier":
            logits = _batched(model, tok, rows["prompt"], batch_size, device, _class_logits)
        else:
            train = load_task(data_root, task, "train")
            n = min(len(train), 512)
            emb_train = _embeddings(model, tok, train["prompt"][:n], batch_size, device)
            train_labels = torch.tensor(train["label"][:n])
            centroids = torch.stack([emb_train[train_labels == c].mean(0) for c in (0, 1)])  # (2, D)
            centroids = torch.nn.functional.normalize(centroids, dim=-1)
            logits = 20.0 * _embeddings(model, tok, rows["prompt"], batch_size, device) @ centroids.T  # (N, 2)
    metrics = _scores(logits, answers, foils)
    if by_length and task == "laundry_list":
        lengths = torch.tensor(rows["n_items"])
        for n_items in sorted(set(lengths.tolist())):
            sel = lengths == n_items
            metrics[f"accuracy_len{n_items}"] = float((logits[sel].argmax(-1) == answers[sel]).float().mean())
    return metrics


def default_tasks(kind: str) -> list[str]:
    from interpipe.data import CAUSAL_TASKS

    return list(CAUSAL_TASKS) if kind == "causal_lm" else list(CLASSIFICATION_TASKS)


def evaluate_model(model_folder: str | Path, data_root: str | Path, tasks: list[str] | None = None,
                   device: str = "cpu", dtype: str = "float32", batch_size: int = 64) -> dict[str, float]:
    """Evaluate a canonical model folder on every task; returns flat ``<task>/<metric>`` numbers."""
    loaded = load_model(model_folder, device=device, dtype=dtype)
    tasks = tasks or default_tasks(loaded.card.kind)
    metrics: dict[str, float] = {}
    for task in tqdm(tasks, desc=f"evaluate {loaded.card.name}"):
        for name, value in evaluate_task(loaded, data_root, task, batch_size, device).items():
            metrics[f"{task}/{name}"] = value
    return metrics
