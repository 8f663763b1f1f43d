"""Evaluation of an LN-free model against the original, the LN-kept control and the frozen-only copy.

Baroni et al. 2025 (arXiv 2507.02559) claim that removing LayerNorm costs little loss and makes
direct logit attribution (DLA) exact. Reported here, each model on the same held-out texts/prompts:

- **CE** on held-out corpus text, per text (token-weighted), so that differences get a *paired*
  bootstrap interval over texts (:func:`interpipe.stats.bootstrap`): ``ce_delta`` (LN-free minus
  original) and ``ce_delta_vs_control`` (LN-free minus the control fine-tuned the same steps with its
  norms kept: the cost of removing the norms itself); ``ce_frozen_no_finetune``: every norm frozen at
  its calibration scale, no fine-tuning (what the recipe starts from).
- **Verdict** (:func:`verdict`): *recovered* when the LN-free CE's upper interval end is within
  ``recovered_within`` nats of the control's CE. A model that has not recovered is reported as such:
  its DLA exactness holds by construction and says nothing about the mechanisms it kept.
- **DLA exactness** (:func:`dla_exactness`): the sum of component DLAs against the logit, and each
  component's DLA against its true direct effect. On the saved LN-free model the final norm is
  linear, so the second holds *by construction*; it shows the conversion is right.
- **DLA agreement** — the check that does not hold by construction: the Pearson correlation, over
  (prompt, component) pairs, of each component's DLA of the answer logit in the LN-free model with
  the same component's DLA in the original (bootstrap interval over prompts), next to the same
  correlation for the control (how much fine-tuning alone moves the attributions).
- Task loss/accuracy (:func:`task_metrics`) before/after; attribution patching's accuracy against
  exact patching lives in :mod:`interpipe.weights.lnfree.patching`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from interpipe.weights.common import architecture
from interpipe.weights.lnfree.fake_norm import norm_eps


def _component_paths(spec) -> list[str]:
    """Modules whose outputs sum to the final residual stream: embeddings, every attention and MLP output."""
    return [p for p in (spec.embed, spec.pos_embed) if p] + [p for b in spec.blocks for p in (b.attn_out, b.mlp_out)]


def _final_position_reader(store: dict, path: str, last: torch.Tensor):
    """A forward hook storing a module's output (batch, pos, d_model) at each row's ``last`` position."""
    def hook(module, args, output):
        out = (output[0] if isinstance(output, tuple) else output).float().cpu()  # (batch or 1, pos, d_model)
        store[path] = out[0, last] if out.shape[0] == 1 else out[torch.arange(len(last)), last]
    return hook


def _unembedding(model, spec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W_U`` (d_model, d_vocab) and ``b_U`` (d_vocab,) or None, from the HF unembedding module."""
    from interpipe.weights.common import unembed_path

    head = model.get_submodule(unembed_path(model, spec))
    bias = getattr(head, "bias", None)
    return head.weight.detach().float().cpu().T, (bias.detach().float().cpu() if bias is not None else None)


@torch.inference_mode()
def final_components(model, spec, ids: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Final-position logits (batch, d_vocab) and the residual components (batch, comp, d_model) there
    (forward hooks on the modules :func:`_component_paths` names)."""
    from interpipe.weights.common import final_position_logits, hooked

    store, paths = {}, _component_paths(spec)
    with hooked(model, post={p: _final_position_reader(store, p, last) for p in paths}):
        logits = final_position_logits(model, spec, ids, last).float().cpu()
    return logits, torch.stack([store[p] for p in paths], dim=1)


@torch.no_grad()
def dla_exactness(model, tokenizer, folder, prompts: list[str], answers: list[str], batch_size: int = 64,
                  return_dla: bool = False):
    """Direct logit attribution of the answer logit at the final position, checked two ways.

    Components: the embeddings and every block's attention and MLP output (the outputs of the modules
    the :class:`ArchSpec` names). With the final norm's per-token scale, ``sum_k DLA_k + b`` reproduces
    the logit (``dla_sum_*``); the true direct effect of ``k`` (logit minus logit with ``k`` removed and
    the norm recomputed) equals ``DLA_k`` only when the norm does not normalise (``dla_vs_direct_*``).
    LayerNorm centres before scaling, RMSNorm does not. ``folder`` is unused (kept for callers).
    With ``return_dla`` also returns every component's DLA, (prompt, comp).
    """
    from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
    from interpipe.weights.common import norm_gain

    spec = architecture(model, "lnfree")
    final = model.get_submodule(spec.final_norm)
    gain, eps = norm_gain(model, spec, spec.final_norm), norm_eps(final)  # (d_model,)
    bias = final.bias.detach().float().cpu() if getattr(final, "bias", None) is not None else torch.zeros(spec.d_model)
    centre = (lambda r: r - r.mean(-1, keepdim=True)) if spec.norm_kind == "layernorm" else (lambda r: r)  # noqa: E731
    W_U, b_U = _unembedding(model, spec)
    sums, diffs, scale_dla, all_dla = [], [], [], []
    for i in range(0, len(prompts), batch_size):
        ids, _, last = encode_prompts(tokenizer, prompts[i:i + batch_size], context_length(model))
        target = torch.tensor([answer_token_id(tokenizer, a) for a in answers[i:i + batch_size]])
        logits, comps = final_components(model, spec, ids, last)  # (batch, V), (batch, comp, d_model)
        w = W_U[:, target].T * gain  # (batch, d_model)
        const = (bias * W_U[:, target].T).sum(-1) + (b_U[target] if b_U is not None else 0.0)  # (batch,)

        def logit_of(resid):  # resid (batch, ..., d_model) -> logit of the target
            rc = centre(resid)
            return (rc / (rc.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w.unsqueeze(-2)).sum(-1) + const[:, None]

        resid = comps.sum(1, keepdim=True)  # (batch, 1, d_model)
        scale = (centre(resid).pow(2).mean(-1, keepdim=True) + eps).sqrt()  # (batch, 1, 1)
        dla = (centre(comps) / scale * w[:, None]).sum(-1)  # (batch, comp)
        direct = logit_of(resid) - logit_of(resid - comps)  # (batch, comp)
        sums.append((dla.sum(1) + const - logits[torch.arange(len(target)), target]).abs())
        diffs.append((dla - direct).abs().flatten())
        scale_dla.append(dla.abs().flatten())
        all_dla.append(dla)
    sums, diffs, scale_dla = torch.cat(sums), torch.cat(diffs), torch.cat(scale_dla)
    out = {"dla_sum_max_abs": float(sums.max()), "dla_sum_mean_abs": float(sums.mean()),
            "dla_vs_direct_mean_abs": float(diffs.mean()), "dla_vs_direct_max_abs": float(diffs.max()),
            "dla_vs_direct_relative": float(diffs.mean() / scale_dla.mean().clamp(min=1e-12))}
    return (out, torch.cat(all_dla)) if return_dla else out


@torch.inference_mode()
def text_losses(model, tokenizer, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per text: summed next-token cross-entropy (nats) and the number of predicted tokens, in the
    order of ``texts`` (batched by length)."""
    from interpipe.weights.common import encode_texts, model_device

    device, order = model_device(model), sorted(range(len(texts)), key=lambda i: len(texts[i]))
    nll, count = np.zeros(len(texts)), np.zeros(len(texts))
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        ids, mask = encode_texts(tokenizer, [texts[r] for r in rows], model)
        ids, mask = ids.to(device), mask.to(device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)  # (B, T-1, V)
        tok = torch.where(mask[:, 1:].bool(), -logp.gather(-1, ids[:, 1:, None]).squeeze(-1), 0.0)  # (B, T-1)
        nll[rows], count[rows] = tok.sum(1).cpu().numpy(), mask[:, 1:].sum(1).cpu().numpy()
    return nll, count


def task_list(data_root, wanted: list[str] | None) -> list[str]:
    """The causal tasks to evaluate: ``wanted`` (each must be prepared) or every prepared one."""
    from interpipe.data import CAUSAL_TASKS

    prepared = [t for t in CAUSAL_TASKS if (Path(data_root) / t).exists()]
    if wanted is None:
        return prepared
    missing = [t for t in wanted if t not in prepared]
    if missing:
        raise ValueError(f"weights.lnfree.tasks={list(wanted)}: {missing} not prepared under {data_root} (have {prepared})")
    return list(wanted)


@torch.inference_mode()
def task_metrics(lm, data_root, task: str, batch_size: int, n_prompts: int = 0) -> dict[str, float]:
    """Loss, accuracy and logit difference of a causal LM on ``task``'s test split (its first
    ``n_prompts``; 0 = all), as :func:`interpipe.models.evaluate.evaluate_task` defines them (only the
    final positions are unembedded)."""
    from interpipe.data import load_task
    from interpipe.models.evaluate import _scores
    from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
    from interpipe.weights.common import final_position_logits

    rows, tok, spec = load_task(data_root, task, "test"), lm.tokenizer, architecture(lm.model, "lnfree")
    rows = rows.select(range(min(n_prompts, len(rows)))) if n_prompts else rows
    logits = []
    for i in range(0, len(rows), batch_size):
        ids, mask, last = encode_prompts(tok, rows["prompt"][i:i + batch_size], context_length(lm.model))
        logits.append(final_position_logits(lm.model, spec, ids, last, mask).float().cpu())  # (b, V)
    ids_of = lambda words: torch.tensor([answer_token_id(tok, w) for w in words])  # noqa: E731
    return _scores(torch.cat(logits), ids_of(rows["answer"]), ids_of(rows["foil"]))


CE_ONLY = ("frozen_no_finetune",)  # baselines measured on held-out CE only (saves their task and DLA passes)


def compare_models(models, data_root, tasks: list[str], valid: list[str], batch_size: int, n_prompts: int = 0):
    """CE per held-out text, task metrics and DLA (the first ``n_prompts`` of each task; 0: every
    test prompt for accuracy, the first 32 for DLA) of each ``(name, loaded)``, each compared with the first (the original); returns (flat metrics with
    intervals, tables). ``lnfree`` may be absent (a removal that diverged)."""
    import pandas as pd

    from interpipe.data import load_task

    prompts, answers = [], []
    for task in tasks:
        test = load_task(data_root, task, "test")
        prompts += list(test["prompt"][:n_prompts or 32])
        answers += list(test["answer"][:n_prompts or 32])
    rows, dla_rows, metrics, losses, dla = [], [], {}, {}, {}
    for name, lm in models:
        losses[name] = text_losses(lm.model, lm.tokenizer, valid, batch_size)
        if name in CE_ONLY:
            continue
        rows += [{"model": name, "task": task, **task_metrics(lm, data_root, task, batch_size, n_prompts)} for task in tasks]
        if prompts:
            exact, dla[name] = dla_exactness(lm.model, lm.tokenizer, None, prompts, answers, batch_size, return_dla=True)
            dla_rows.append({"model": name, **exact})
            metrics.update({f"{k}_{name}": v for k, v in exact.items()})
    metrics.update(ce_metrics(losses))
    if prompts:
        metrics.update(dla_agreement(dla))
    frame = pd.DataFrame(rows)
    for task in tasks:
        sub = frame[frame["task"] == task].set_index("model")
        if "lnfree" in sub.index:
            metrics[f"{task}_loss_delta"] = float(sub.loc["lnfree", "loss"] - sub.loc["original", "loss"])
        for name in sub.index:
            metrics[f"{task}_accuracy_{name}"] = float(sub.loc[name, "accuracy"])
    per_component = pd.DataFrame({name: d.mean(0).numpy() for name, d in dla.items()}) if dla else pd.DataFrame()
    return metrics, {"task_loss": frame, "dla_exactness": pd.DataFrame(dla_rows), "dla_per_component": per_component}


def ce_metrics(losses: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """``ce_<model>`` with intervals over texts, and the paired differences ``ce_delta`` (LN-free minus
    original) and ``ce_delta_vs_control``. A model whose loss is not finite on some texts (a frozen
    SmolLM2 overflows on some) gets no ``ce_<model>`` but ``nonfinite_texts_<model>`` (the fraction)
    and ``ce_<model>_finite_texts`` (CE over the other texts, not comparable with the rest)."""
    from interpipe.stats import bootstrap, to_metrics

    nll0, count = losses["original"]
    mean = lambda a, c: float(a.sum() / c.sum())  # noqa: E731  token-weighted CE over the texts
    delta = lambda a, b, c: float((a.sum() - b.sum()) / c.sum())  # noqa: E731  paired CE difference
    out = {}
    for name, (nll, _) in losses.items():
        finite = np.isfinite(nll)
        out[f"nonfinite_texts_{name}"] = float(1 - finite.mean())
        if finite.all():
            out.update(to_metrics(f"ce_{name}", bootstrap(nll, count, statistic=mean)))
        else:
            if finite.any():  # no ce_<model>: metrics are finite numbers
                out[f"ce_{name}_finite_texts"] = mean(nll[finite], count[finite])
    paired = [("ce_delta", "lnfree", "original"), ("ce_delta_vs_control", "lnfree", "control")]
    for key, a, b in paired:
        if a in losses and b in losses and out[f"nonfinite_texts_{a}"] == 0 and out[f"nonfinite_texts_{b}"] == 0:
            out.update(to_metrics(key, bootstrap(losses[a][0], losses[b][0], count, statistic=delta)))
    if "control" in losses:
        out["ce_delta_control"] = mean(losses["control"][0], count) - mean(nll0, count)
    return out


def dla_agreement(dla: dict[str, torch.Tensor]) -> dict:
    """Pearson r over (prompt, component) of each model's DLA with the original's, with a bootstrap
    interval over prompts (``dla_agreement_<model>``)."""
    from interpipe.stats import bootstrap, to_metrics

    base = dla["original"].numpy()  # (prompt, comp)
    out = {}
    for name, d in dla.items():
        if name == "original":
            continue
        other = d.numpy()

        def corr(idx, other=other):  # idx: resampled prompt indices (floats from the bootstrap)
            rows = idx.astype(int)
            return float(np.corrcoef(base[rows].ravel(), other[rows].ravel())[0, 1])

        out.update(to_metrics(f"dla_agreement_{name}", bootstrap(np.arange(len(base), dtype=float), statistic=corr,
                                                                 n_resamples=500)))
    return out




def verdict(metrics: dict, within: float) -> dict:
    """``recovered`` (1/0): the LN-free CE's upper interval end lies within ``within`` nats of the
    LN-kept control's CE (without a control: of the original's); ``verdict``: the sentence to quote."""
    reference = "control" if "ce_control" in metrics else "original"
    base, frozen = metrics[f"ce_{reference}"], metrics.get("ce_frozen_no_finetune", float("nan"))
    frozen_text = f"{frozen:.3f}" if math.isfinite(frozen) else \
        f"non-finite on {metrics.get('nonfinite_texts_frozen_no_finetune', float('nan')):.0%} of the texts"
    if "diverged_at_step" in metrics:
        return {"recovered": 0,
                "verdict": f"not recovered: the removal diverged at step {metrics['diverged_at_step']} "
                           f"({', '.join(filter(None, (metrics.get('diverged_because'), metrics.get('diverged_after'))))}); "
                           f"{reference} CE {base:.3f}, frozen without "
                           f"fine-tuning: {frozen_text}"}
    if "ce_lnfree" not in metrics:  # finite on only some held-out texts
        return {"recovered": 0, "verdict": f"not recovered: the LN-free model's loss is not finite on "
                                           f"{metrics['nonfinite_texts_lnfree']:.0%} of the held-out texts; {reference} "
                                           f"CE {base:.3f}, frozen without fine-tuning: {frozen_text}"}
    gap = metrics["ce_lnfree"] - base
    high = metrics.get("ce_lnfree_ci_high", metrics["ce_lnfree"]) - base
    recovered = bool(high <= within)
    text = (f"recovered: LN-free CE {metrics['ce_lnfree']:.3f} is {gap:+.3f} nats from the {reference}'s"
            if recovered else
            f"not recovered: LN-free CE {metrics['ce_lnfree']:.3f} is {gap:+.3f} nats above the {reference}'s "
            f"{base:.3f} (frozen without fine-tuning: {frozen_text}); the schedule is too short "
            f"to recover, and the LN-free model's exact DLA holds by construction, not as a finding")
    return {"recovered": int(recovered), "ce_gap_vs_reference": gap, "verdict": text}


def headline_frame(model: str, metrics: dict):
    """The quoted numbers: the verdict (recovered 1/0, the sentence in its note), CE of the LN-free
    model (baseline: the LN-kept control), the frozen-only CE (baseline: the original), the paired
    difference from the control, and the DLA agreement with the original (baseline: the control's)."""
    import pandas as pd

    def row(metric, key, baseline, base_value, note=""):
        return {"model": model, "task": "tasks" if metric.startswith("dla") else "corpus", "method": "lnfree",
                "metric": metric, "value": metrics[key], "ci_low": metrics.get(key + "_ci_low", float("nan")),
                "ci_high": metrics.get(key + "_ci_high", float("nan")), "baseline": baseline,
                "baseline_value": base_value, "note": note}

    rows = [row("recovered", "recovered", "LN-kept control" if "ce_control" in metrics else "original", 1.0,
                metrics["verdict"])]
    if "ce_lnfree" not in metrics:
        pass  # diverged: no LN-free model to score
    elif "ce_control" in metrics:
        rows += [row("ce", "ce_lnfree", "LN-kept control", metrics["ce_control"], f"original {metrics['ce_original']:.3f}"),
                 row("ce_delta_vs_control", "ce_delta_vs_control", "no change", 0.0, "paired over held-out texts")
                 if "ce_delta_vs_control" in metrics else row("ce_control", "ce_control", "original", metrics["ce_original"])]
    else:
        rows.append(row("ce", "ce_lnfree", "original", metrics["ce_original"]))
    if "ce_frozen_no_finetune" in metrics:
        rows.append(row("ce_frozen_no_finetune", "ce_frozen_no_finetune", "original", metrics["ce_original"],
                        f"every norm frozen at the {metrics.get('scale_statistic', 'mean')} of its tokens' calibration "
                        f"scales, special positions "
                        f"on their own, no fine-tuning"))
    for name in ("lnfree", "frozen_no_finetune"):
        if metrics.get(f"nonfinite_texts_{name}", 0) > 0:
            rows.append(row(f"nonfinite_texts_{name}", f"nonfinite_texts_{name}", "original", 0.0,
                            "fraction of held-out texts whose loss overflows (no CE is quoted for this model)"))
    if "dla_agreement_lnfree" in metrics:
        note = "Pearson r of per-component DLA with the original"
        rows.append(row("dla_agreement", "dla_agreement_lnfree", "LN-kept control",
                        metrics.get("dla_agreement_control", float("nan")),
                        note if metrics["recovered"] else note + "; model not recovered"))
    return pd.DataFrame(rows)


def position_table(wrapped: dict, special: tuple[int, ...]):
    """Per norm: the mean scale of the ordinary real tokens, and each special position's mean scale
    and its ratio to it (calibration texts)."""
    import pandas as pd

    rows = []
    for name, norm in wrapped.items():
        means = norm.position_means()  # (pos,)
        row = {"norm": name, "ordinary_scale": float(norm.avg)}
        for j, pos in enumerate(special):
            row[f"position{pos}_scale"] = float(norm.avg_special[j])
            row[f"position{pos}_ratio"] = float(norm.avg_special[j] / norm.avg)
        seen = means[~torch.isnan(means)]
        row["max_position_over_median"] = float(seen.max() / seen.median()) if len(seen) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
