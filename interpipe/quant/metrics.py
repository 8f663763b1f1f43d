"""End metrics of a quantized model against its full-precision original, and per-layer errors.

Deltas are quantized minus FP (``loss_delta``, ``ppl_delta``); drops are FP minus quantized
(``task_acc_drop``, ``logit_diff_drop``, ``cos_drop = 1 - cos_mean``, ``acc_drop``), so lower is
better for every one.

- causal LM (toy GPT-2, SmolLM2): next-token loss and perplexity on held-out text (the prepared
  corpus's validation split: templated task sentences, not natural prose); task accuracy (the
  answer is the argmax next token after the prompt) and logit difference (answer minus foil logit
  at the last prompt token) on every prepared causal task; agreement of the predicted answers
  with the FP model's. Only the positions a metric reads go through the unembedding.
- encoder (MiniLM): mean-pooled, L2-normalised sentence embeddings (the sentence-transformers
  recipe of all-MiniLM-L6-v2); cosine similarity to the FP embeddings and agreement of
  nearest-neighbour retrieval (each text's nearest other text) with the FP model's.
- sequence classifier (fine-tuned MiniLM): accuracy on the ``sentiment`` test split and
  agreement with the FP predictions.

Every end metric is also kept per held-out example (:meth:`EndMetrics.examples`), from which
:mod:`~interpipe.quant.resample` draws its intervals; a causal LM's per-task pairwise accuracy
(``pairwise_acc/<task>``: the share of prompts whose answer logit beats the foil's, the circuits and
quant_interp studies' rule) comes with them.

Per layer: MSE and SQNR of each quantized linear's output against the FP model's output of the
same linear on the same examples (propagated error: earlier layers' quantization included),
and against the FP layer on the same (quantized-model) input (local error).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from interpipe.models.tokens import answer_token_id
from interpipe.quant.arch import get_module
from interpipe.quant.calibrate import TextBatch, make_batches, token_rows
from interpipe.quant.layers import ErrorStats, QuantLinear, TokenMask, covering
from interpipe.typing import Float, Int, Tensor


def _spread(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (the corpus split is ordered by task)."""
    n = min(n, n_total)
    return sorted({int(i * n_total / n) for i in range(n)})


class EndMetrics:
    """Prepared evaluation batches for one model kind; ``measure`` then ``compare``."""

    def __init__(self, kind: str, tokenizer, data_root: str | Path, n: int, max_length: int, batch_size: int,
                 device):
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        from interpipe.data import CAUSAL_TASKS, load_task

        self.kind, self.device = kind, device
        self.tasks: dict[str, tuple[list[TextBatch], torch.Tensor, torch.Tensor | None]] = {}  # batches, answers, foils
        self.skipped: dict[str, str] = {}  # task -> why it has no accuracy (recorded in the run's info)
        if kind == "causal_lm":
            corpus = load_task(data_root, "corpus", "validation")
            texts = [corpus[i]["text"] for i in _spread(len(corpus), n)]
            for task in CAUSAL_TASKS:
                try:
                    rows = load_task(data_root, task, "test")
                except FileNotFoundError:
                    continue
                rows = rows.select(range(min(n, len(rows))))
                prompts = list(rows["prompt"])
                try:
                    answers = [answer_token_id(tokenizer, a) for a in rows["answer"]]
                except ValueError as exc:  # multi-token answers: no argmax accuracy for this tokenizer
                    self.skipped[task] = str(exc)
                    continue
                try:
                    foils = torch.tensor([answer_token_id(tokenizer, f) for f in rows["foil"]])
                except (ValueError, KeyError) as exc:  # multi-token foils: accuracy without logit difference
                    self.skipped[f"{task}/logit_diff"] = str(exc)
                    foils = None
                self.tasks[task] = (make_batches(tokenizer, prompts, max_length, batch_size), torch.tensor(answers), foils)
        elif kind == "encoder":
            sentiment = load_task(data_root, "sentiment", "test")
            corpus = load_task(data_root, "corpus", "validation")
            texts = list(sentiment["prompt"][:n]) + [corpus[i]["text"] for i in _spread(len(corpus), n)]
        elif kind == "sequence_classifier":
            sentiment = load_task(data_root, "sentiment", "test")
            rows = sentiment.select(range(min(n, len(sentiment))))
            texts = list(rows["prompt"])
            self.labels = torch.tensor(list(rows["label"]))
        else:
            raise ValueError(f"no end metrics for model kind {kind!r}")
        self.texts = texts  # the text set (for the causal LM: held-out corpus text for the loss)
        self.text_batches = make_batches(tokenizer, texts, max_length, batch_size)

    def probe_batches(self, n: int) -> list[TextBatch]:
        """``n`` of the evaluation texts, spread over the set (per-layer errors, equivalence)."""
        texts = [self.texts[i] for i in _spread(len(self.texts), n)]
        return make_batches(self.tokenizer, texts, self.max_length, self.batch_size)

    @torch.no_grad()
    def _forward(self, model: nn.Module, batch: TextBatch, tokens: TokenMask | None):
        batch = batch.to(self.device)
        with covering(tokens, batch.mask):
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return batch, out

    @torch.no_grad()
    def _hidden(self, model: nn.Module, batch: TextBatch, tokens: TokenMask | None):
        """The causal LM's final hidden states ``(batch, pos, d)`` (after its final norm) and its head."""
        base = getattr(model, model.base_model_prefix)
        batch, out = self._forward(base, batch, tokens)
        return batch, out.last_hidden_state, model.get_output_embeddings()

    @torch.no_grad()
    def measure(self, model: nn.Module, tokens: TokenMask | None = None) -> dict[str, torch.Tensor]:
        """Raw per-example results (CPU tensors) of one model."""
        raw: dict[str, torch.Tensor] = {}
        if self.kind == "causal_lm":
            nll, count = [], []
            for batch in self.text_batches:
                batch, hidden, head = self._hidden(model, batch, tokens)
                valid = batch.mask[:, 1:]  # (batch, pos-1): position p predicts token p+1
                logits = head(hidden[:, :-1][valid]).float()  # (n_valid, vocab)
                losses = F.cross_entropy(logits, batch.input_ids[:, 1:][valid], reduction="none")  # (n_valid,)
                rows = valid.nonzero()[:, 0]  # (n_valid,) the text of each predicted token
                nll.append(torch.zeros(len(valid), dtype=torch.float64, device=losses.device)
                           .index_add_(0, rows, losses.double()).cpu())  # (batch,) summed nll per text
                count.append(valid.sum(1).cpu())  # (batch,) predicted tokens per text
            raw["nll"], raw["tokens"] = torch.cat(nll), torch.cat(count)  # (n_texts,) each
            for task, (batches, _, foils) in self.tasks.items():
                last_logits = []
                for batch in batches:
                    batch, hidden, head = self._hidden(model, batch, tokens)
                    last = batch.attention_mask.sum(1) - 1  # (batch,) last real position
                    examples = torch.arange(len(last), device=last.device)  # (batch,)
                    last_logits.append(head(hidden[examples, last]).float().cpu())  # (batch, vocab)
                logits = torch.cat(last_logits)  # (n, vocab)
                raw[f"pred/{task}"] = logits.argmax(-1)
                answers = self.tasks[task][1]
                if foils is not None:
                    rows = torch.arange(len(answers))
                    raw[f"ld/{task}"] = logits[rows, answers] - logits[rows, foils]  # (n,) answer - foil logit
        elif self.kind == "encoder":
            embs = []
            for batch in self.text_batches:
                batch, out = self._forward(model, batch, tokens)
                m = batch.attention_mask[..., None].float()  # (batch, pos, 1)
                pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)  # (batch, d_model)
                embs.append(F.normalize(pooled.float(), dim=-1).cpu())
            raw["emb"] = torch.cat(embs)
        else:
            raw["logits"] = torch.cat([self._forward(model, b, tokens)[1].logits.float().cpu()
                                       for b in self.text_batches])  # (n, classes)
        return raw

    def compare(self, fp: dict[str, torch.Tensor], q: dict[str, torch.Tensor]) -> dict[str, float]:
        """End metrics of ``q`` and their deltas against ``fp`` (both from :meth:`measure`)."""
        m: dict[str, float] = {}
        if self.kind == "causal_lm":
            tokens = float(fp["tokens"].sum())
            m["fp_loss"], m["loss"] = float(fp["nll"].sum()) / tokens, float(q["nll"].sum()) / tokens
            m["loss_delta"] = m["loss"] - m["fp_loss"]
            m["fp_ppl"], m["ppl"] = math.exp(m["fp_loss"]), math.exp(m["loss"])
            m["ppl_delta"] = m["ppl"] - m["fp_ppl"]
            accs, fp_accs, agree, lds, fp_lds = [], [], [], [], []
            for task, (_, answers, foils) in self.tasks.items():
                if foils is not None:
                    m[f"logit_diff/{task}"] = float(q[f"ld/{task}"].mean())
                    m[f"fp_logit_diff/{task}"] = float(fp[f"ld/{task}"].mean())
                    lds.append(m[f"logit_diff/{task}"])
                    # pairwise accuracy: the share of prompts whose answer logit beats the foil's
                    m[f"pairwise_acc/{task}"] = float((q[f"ld/{task}"] > 0).float().mean())
                    m[f"fp_pairwise_acc/{task}"] = float((fp[f"ld/{task}"] > 0).float().mean())
                    fp_lds.append(m[f"fp_logit_diff/{task}"])
                m[f"acc/{task}"] = float((q[f"pred/{task}"] == answers).float().mean())
                m[f"fp_acc/{task}"] = float((fp[f"pred/{task}"] == answers).float().mean())
                accs.append(m[f"acc/{task}"])
                fp_accs.append(m[f"fp_acc/{task}"])
                agree.append(float((q[f"pred/{task}"] == fp[f"pred/{task}"]).float().mean()))
            if accs:
                m["task_acc"], m["fp_task_acc"] = sum(accs) / len(accs), sum(fp_accs) / len(fp_accs)
                m["task_acc_drop"] = m["fp_task_acc"] - m["task_acc"]
                m["answer_agreement"] = sum(agree) / len(agree)
            if lds:
                m["logit_diff"], m["fp_logit_diff"] = sum(lds) / len(lds), sum(fp_lds) / len(fp_lds)
                m["logit_diff_drop"] = m["fp_logit_diff"] - m["logit_diff"]
        elif self.kind == "encoder":
            e_fp, e_q = fp["emb"], q["emb"]
            cos = (e_fp * e_q).sum(-1)  # (n,) both normalised
            m["cos_mean"], m["cos_min"] = float(cos.mean()), float(cos.min())
            m["cos_drop"] = 1.0 - m["cos_mean"]
            eye = torch.eye(len(e_fp), dtype=torch.bool)
            nn_fp = (e_fp @ e_fp.T).masked_fill(eye, -2).argmax(-1)  # (n,) nearest other text
            nn_q = (e_q @ e_q.T).masked_fill(eye, -2).argmax(-1)
            m["nn_agreement"] = float((nn_fp == nn_q).float().mean())
            m["self_retrieval"] = float(((e_q @ e_fp.T).argmax(-1) == torch.arange(len(e_fp))).float().mean())
        else:
            fp_pred, q_pred = fp["logits"].argmax(-1), q["logits"].argmax(-1)  # (n,)
            m["fp_acc"] = float((fp_pred == self.labels).float().mean())
            m["acc"] = float((q_pred == self.labels).float().mean())
            m["acc_drop"] = m["fp_acc"] - m["acc"]
            m["pred_agreement"] = float((q_pred == fp_pred).float().mean())
            # accuracy saturates on an easy task; the margin moves before any prediction flips
            m["fp_margin"], m["margin"] = _margin(fp["logits"], self.labels), _margin(q["logits"], self.labels)
            m["margin_drop"] = m["fp_margin"] - m["margin"]
        return m


    def examples(self, fp: dict[str, torch.Tensor], q: dict[str, torch.Tensor]) -> pd.DataFrame:
        """Per held-out example, the values every end metric averages (:mod:`~interpipe.quant.resample`):
        one row per ``set`` (``corpus``, each task, ``sentiment``, ``texts``) x ``example``; the FP model's
        on the same row (paired). Columns: causal LM ``nll`` / ``fp_nll`` (summed over the text's predicted
        ``tokens``), per task ``correct`` / ``fp_correct`` (argmax is the answer) and ``ld`` / ``fp_ld``
        (answer minus foil logit); classifier ``correct``, ``fp_correct``, ``margin``, ``fp_margin``; encoder
        ``cos`` (to the FP embedding)."""
        frames = []

        def add(name: str, **columns) -> None:
            n = len(next(iter(columns.values())))
            frames.append(pd.DataFrame({"set": name, "example": range(n),
                                        **{k: v.double().numpy() for k, v in columns.items()}}))

        if self.kind == "causal_lm":
            add("corpus", nll=q["nll"], fp_nll=fp["nll"], tokens=fp["tokens"])
            for task, (_, answers, foils) in self.tasks.items():
                extra = {"ld": q[f"ld/{task}"], "fp_ld": fp[f"ld/{task}"]} if foils is not None else {}
                add(task, correct=(q[f"pred/{task}"] == answers), fp_correct=(fp[f"pred/{task}"] == answers), **extra)
        elif self.kind == "encoder":
            add("texts", cos=(fp["emb"] * q["emb"]).sum(-1))  # (n,) both normalised
        else:
            add("sentiment", correct=q["logits"].argmax(-1) == self.labels,
                fp_correct=fp["logits"].argmax(-1) == self.labels,
                margin=_margins(q["logits"], self.labels), fp_margin=_margins(fp["logits"], self.labels))
        return pd.concat(frames, ignore_index=True)


def _margins(logits: Float[Tensor, "n classes"], labels: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Per example, the logit margin of the gold class over the best other class."""
    rows = torch.arange(len(labels))
    gold = logits[rows, labels]  # (n,)
    other = logits.clone()
    other[rows, labels] = float("-inf")
    return gold - other.max(-1).values


def _margin(logits: Float[Tensor, "n classes"], labels: Int[Tensor, " n"]) -> float:
    """Mean logit margin of the gold class over the best other class."""
    return float(_margins(logits, labels).mean())


@torch.no_grad()
def capture_outputs(model: nn.Module, modules: list[str], batches: list[TextBatch], device,
                    tokens: TokenMask | None = None, outputs: list | None = None) -> dict[str, list[torch.Tensor]]:
    """Outputs of ``modules`` (non-padding tokens, ``[n, d_out]``) for every batch.

    ``outputs``, if given, receives the model's own output of every batch (the same forward).
    """
    store: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    current = {"mask": None}

    def make_hook(name):
        def hook(module, args, out):
            store[name].append(token_rows(out.detach(), current["mask"]).float().cpu())
        return hook

    handles = [get_module(model, name).register_forward_hook(make_hook(name)) for name in modules]
    try:
        for batch in batches:
            batch = batch.to(device)
            current["mask"] = batch.mask
            with covering(tokens, batch.mask):
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            if outputs is not None:
                outputs.append(out)
    finally:
        for h in handles:
            h.remove()
    return store


def layer_errors(reference: dict[str, list[torch.Tensor]], quantized: dict[str, list[torch.Tensor]],
                 layers: dict[str, QuantLinear]) -> list[dict]:
    """Per-layer rows: propagated MSE/SQNR (vs the FP model) and local MSE/SQNR (vs the FP layer)."""
    rows = []
    for name, layer in layers.items():
        prop = ErrorStats()
        for ref, q in zip(reference[name], quantized[name]):
            prop.add(ref, q)
        rows.append({"module": name, "kind": layer.kind, "mse": prop.mse, "sqnr_db": prop.sqnr_db,
                     "local_mse": layer.local.mse, "local_sqnr_db": layer.local.sqnr_db,
                     "act_min": float(layer.x_min.min()) if layer.x_min is not None else float("nan"),
                     "act_max": float(layer.x_max.max()) if layer.x_max is not None else float("nan")})
        if layer.threshold is not None:  # LLM.int8(): share of input dimensions kept in full precision
            rows[-1]["decomposed_share"] = layer.decomposed_share
    return rows
