"""The FP circuit inside the quantized model, and the clean logit difference the quantized model keeps.

The prompts are the FP circuits run's own (its first test examples, as many as it ran on the task, the same
reference distribution for the template-aligned mean ablation); the FP circuit is scored on their
held-out half exactly as the circuit study scores a circuit (:func:`interpipe.circuits.scoring.score_heldout`:
every pool head outside the circuit mean-ablated, ratio-of-means and per-prompt faithfulness with
bootstrap intervals, and ``n_random`` random circuits of the same size as the baseline), only the
forward passes run in the quantized model. Scored in the FP model itself this reproduces the FP
run's held-out numbers.

The clean logit difference retained is ``mean LD_q / mean LD_fp`` over the same held-out prompts
in both models, with a paired bootstrap interval over prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from interpipe.circuits import scoring
from interpipe.circuits.bridge import PromptBatch, batch_from_task
from interpipe.circuits.metrics import logit_diff
from interpipe.components import Component
from interpipe.settings.circuits import CircuitSettings
from interpipe.stats import Interval, bootstrap


def circuit_batch(bridge: Any, settings: CircuitSettings, data_root: Any, task: str) -> PromptBatch:
    """The circuits run's batch of ``task`` (its prompt count for the task, split and mean-ablation reference) in ``bridge``."""
    return batch_from_task(bridge, data_root, task, settings.prompts_for(task), settings.split, settings.on_mismatch,
                           settings.reference_prompts)


def load_fp_model(folder: Path, device: str, dtype: str) -> Any:
    """The FP model as a plain Hugging Face causal LM (its logits are the bridge's; no bridge needed to read them)."""
    from interpipe.models import load_pretrained

    model, _, _ = load_pretrained(str(folder), "causal_lm", device=device, dtype=dtype, attn_implementation="eager")
    return model


@torch.no_grad()
def heldout_clean_ld(model: Any, batch: PromptBatch) -> np.ndarray:
    """Per held-out prompt of ``batch``, the clean logit difference answer − foil in ``model`` ``(heldout,)``.

    The prompts are right-padded and the model causal, so the answer position never sees the padding.
    """
    half = batch.subset(batch.half_rows()[1])
    device = next(model.parameters()).device
    logits = model(input_ids=half.clean_tokens.to(device)).logits  # (heldout, pos, d_vocab)
    at_answer = logits[torch.arange(half.size, device=device), half.answer_pos.to(device)]  # (heldout, d_vocab)
    return logit_diff(at_answer, half.answer_ids.to(device), half.foil_ids.to(device)).float().cpu().numpy()


def heldout_scorer(bridge: Any, batch: PromptBatch, settings: CircuitSettings, memory_mb: float) -> scoring.Scorer:
    """The scorer of the held-out half, its ablation means taken over the whole batch's reference (as the study)."""
    from interpipe.circuits.study import ablation_halves

    half, sources = ablation_halves(bridge, batch, settings)[1]
    return scoring.Scorer(bridge, half, scoring.pool(bridge, settings.ablate_mlps), settings.ablation, memory_mb,
                          sources=sources)


def score_fp_circuit(scorer: scoring.Scorer, circuit: list[Component], n_random: int) -> dict[str, float]:
    """The held-out metrics of ``circuit`` on ``scorer``: faithfulness, random baseline, accuracy."""
    if not circuit:
        raise ValueError("the FP circuit is empty: the FP model did not solve the task, so there is no circuit to score")
    unknown = [c.name for c in sorted(set(circuit) - set(scorer.components))]
    if unknown:
        raise ValueError(f"FP circuit components {unknown} are not in the quantized model's pool: "
                         f"the two models must have the same layers and heads")
    metrics, _ = scoring.score_heldout(scorer, circuit, n_random)
    return metrics


def check_same_tokenizer(fp_folder: Path, quantized_folder: Path, prompts: list[str]) -> None:
    """Both folders' tokenizers must give ``prompts`` the same token ids, else nothing here is paired."""
    from transformers import AutoTokenizer

    fp, quantized = AutoTokenizer.from_pretrained(str(fp_folder)), AutoTokenizer.from_pretrained(str(quantized_folder))
    for prompt in prompts:
        if fp(prompt, add_special_tokens=False).input_ids != quantized(prompt, add_special_tokens=False).input_ids:
            raise ValueError(f"{quantized_folder}'s tokenizer splits {prompt!r} differently from {fp_folder}'s: a "
                             f"quantized model must keep its FP model's tokenizer, or the two runs see different tokens")


def retained_logit_diff(fp_ld: np.ndarray, quantized_ld: np.ndarray, n_resamples: int) -> Interval:
    """``mean LD_q / mean LD_fp`` over the same prompts, with a paired bootstrap interval over prompts."""
    return bootstrap(quantized_ld, fp_ld, statistic=scoring.ratio_of_means, n_resamples=n_resamples)
