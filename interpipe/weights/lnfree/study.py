"""The lnfree study end to end: calibrate, fine-tune with and without the norms, save, evaluate.

Reads top-down: :func:`run_lnfree` names each step. What is evaluated is the LN-free folder reloaded
with stock ``transformers``, next to the original, the LN-kept control (fine-tuned the same steps on
the same batches) and the frozen-only copy (norms frozen at their calibration scales, no fine-tuning).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from interpipe.models.loading import LoadedModel
from interpipe.models.tokens import with_first_token
from interpipe.weights.checkpoint import remove_checkpoint
from interpipe.weights.lnfree.evaluate import compare_models, headline_frame, position_table, task_list, verdict
from interpipe.weights.lnfree.fake_norm import unwrap_to_lnfree
from interpipe.weights.lnfree.patching import patching_accuracy, patching_task
from interpipe.weights.lnfree.recipe import finetune, frozen_copy, lnfree_architecture, require_float32, statistic_name
from interpipe.weights.result import StudyResult


class LNFreeResult(StudyResult):
    """LN-free fine-tuning: schedule, loss curve, position scales, CE before/after, DLA, patching."""

    study = "lnfree"

    def plot(self) -> dict:
        from interpipe.weights.plots import plot_lnfree

        return plot_lnfree(self)


def run_lnfree(loaded, model_folder, data_root, s, seed: int = 0, batch_size: int = 64, out_dir=None,
               checkpoint_dir=None) -> LNFreeResult:
    """Remove every norm of ``loaded`` by fine-tuning; save the LN-free folder; compare it, reloaded
    with stock ``transformers``, with the original, the LN-kept control and the frozen-only copy.

    Refuses unsupported architectures (naming the ``model_type``) and half-precision models before any
    work. With ``on_divergence: report`` a removal that diverges is reported (step, events applied)
    instead of stopping the stage; there is then no LN-free model to score.
    """
    import pandas as pd

    require_float32(loaded.model, s.lr)
    spec = lnfree_architecture(loaded.model)
    tasks = task_list(data_root, s.tasks)
    if s.first_token:  # every model of the study (and the saved LN-free folder) reads texts with this token first
        loaded = LoadedModel(loaded.model, with_first_token(loaded.tokenizer, s.first_token), loaded.card)
    train, valid, ids, mask = corpus(loaded, data_root, s)
    frozen, frozen_norms, special, quantile, candidates = frozen_copy(
        loaded.model, loaded.tokenizer, list(train[: s.n_calibration]), s, batch_size)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    curve: list[dict] = []
    lnfree, target, schedule, diverged = _remove(loaded, model_folder, ids, mask, s, seed, special, quantile, ckpt,
                                                 curve, out_dir, spec)
    control = _control(loaded.model, ids, mask, s, seed, special, ckpt, curve) if s.control else None
    models = [("original", loaded)] + ([("lnfree", lnfree)] if lnfree else [])
    if control is not None:
        models.append(("control", LoadedModel(control, loaded.tokenizer, loaded.card)))
    models.append(("frozen_no_finetune", LoadedModel(frozen, loaded.tokenizer, loaded.card)))
    metrics, tables = compare_models(models, data_root, tasks, valid, batch_size, s.task_prompts)
    metrics.update({"first_token_ratio": _max_ratio(frozen_norms), "n_special_positions": len(special),
                    "scale_statistic": statistic_name(quantile), **diverged})
    metrics.update(verdict(metrics, s.recovered_within))
    task = patching_task(data_root, tasks) if s.patching_prompts else None
    if task:
        pairs = [("original", loaded, model_folder)] + ([("lnfree", lnfree, target)] if lnfree else [])
        patched, tables["attribution_patching"] = patching_accuracy(pairs, data_root, task, s.patching_prompts)
        metrics.update(patched)
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "architecture": spec.to_dict(),
            "special_positions": list(special), "first_token": s.first_token,
            "scale_statistic": statistic_name(quantile), "verdict": metrics["verdict"],
            "saved_model": (target.name if out_dir is not None else str(target)) if lnfree else None}
    if ckpt:
        remove_checkpoint(ckpt / "control")
        if not diverged:
            remove_checkpoint(ckpt)
    tables.update({"training_curve": pd.DataFrame(curve), "schedule": pd.DataFrame(schedule), "scale_statistic": candidates,
                   "position_scales": position_table(frozen_norms, special),
                   "headline": headline_frame(loaded.card.name, metrics)})
    return LNFreeResult(metrics, tables, {}, info)


def _remove(loaded, model_folder, ids, mask, s, seed, special, quantile, ckpt, curve: list[dict], out_dir, spec):
    """The removal run, saved and reloaded: ``(LN-free model or None, its folder, schedule rows,
    divergence metrics)``; a divergence is re-raised unless ``on_divergence`` is ``report``."""
    from interpipe.divergence import TrainingDiverged
    from interpipe.weights.lnfree.recipe import schedule_of

    try:
        tuned, wrapped, _, schedule = finetune(loaded.model, ids, mask, s, seed, special, ckpt, curve=curve,
                                               quantile=quantile)
    except TrainingDiverged as err:
        if s.on_divergence != "report":
            raise
        step = len(curve)
        events = [e for e in schedule_of(loaded.model, s, special) if e.step <= step]
        last = events[-1] if events else None
        after = f"after the {last.phase} event at step {last.step}, {len(events)} events in" if last else "before any event"
        schedule = [e.to_row() for e in schedule_of(loaded.model, s, special)]
        return None, None, schedule, {"diverged_at_step": step, "diverged_after": after, "diverged_because": err.what}
    unwrap_to_lnfree(tuned, wrapped, s.big_eps)
    lnfree, target = _save_and_reload(tuned, loaded, model_folder, spec, schedule, s, out_dir)
    return lnfree, target, schedule, {}


def corpus(loaded, data_root, s):
    """Training texts, held-out texts and the training rows (N, T) with their mask: one text per row
    (its first ``max_tokens``), or with ``pack`` the texts joined by EOS into rows of ``pack`` tokens;
    with ``first_token`` each packed row starts with it, and it appears nowhere else (SmolLM2 makes
    every ``<|endoftext|>`` an attention sink with a massive activation, its EOS not)."""
    from interpipe.data import load_task
    from interpipe.weights.common import encode_texts

    train = load_task(data_root, "corpus", "train")["text"]
    valid = list(load_task(data_root, "corpus", "validation")["text"])
    train = train[: s.max_train_texts] if s.max_train_texts else train
    valid = valid[: s.max_eval_texts] if s.max_eval_texts else valid
    ids, mask = encode_texts(loaded.tokenizer, list(train), loaded.model)  # (N, T)
    if s.pack:
        eos = loaded.tokenizer.eos_token_id
        first = [loaded.tokenizer.convert_tokens_to_ids(s.first_token)] if s.first_token else []
        body = s.pack - len(first)
        stream = torch.cat([torch.cat([row[m.bool()][len(first):], torch.tensor([eos])])
                            for row, m in zip(ids, mask)])  # (tokens,) without the first tokens
        rows = stream[: len(stream) // body * body].view(-1, body)  # (N', body)
        ids = torch.cat([torch.tensor(first, dtype=rows.dtype).expand(len(rows), len(first)), rows], dim=1)  # (N', pack)
        mask = torch.ones_like(ids)
    elif s.max_tokens:
        ids, mask = ids[:, : s.max_tokens], mask[:, : s.max_tokens]  # each text's first max_tokens tokens
    return train, valid, ids, mask


def _control(model, ids, mask, s, seed: int, special, ckpt: Path | None, curve: list[dict]):
    """The LN-kept control, fine-tuned the same steps; its loss joins ``curve`` as ``control_loss``."""
    control, _, control_curve, _ = finetune(model, ids, mask, s, seed, special, ckpt / "control" if ckpt else None,
                                            freeze=False)
    for i, other in enumerate(control_curve):  # past a divergence the removal has no rows
        if i == len(curve):
            curve.append({"step": other["step"]})
        curve[i]["control_loss"] = other["loss"]
    return control


def _max_ratio(wrapped) -> float:
    ratios = [w.first_ratio() for w in wrapped.values()]
    return max((r for r in ratios if r == r), default=float("nan"))


def _save_and_reload(tuned, loaded, model_folder, spec, schedule: list[dict], s, out_dir):
    """Save the LN-free folder and load it back with stock ``transformers`` (what is evaluated)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from interpipe.models import describe, save_model_folder

    frozen = {r["target"] + ("" if r["use"] == "all" else f" ({r['use']})"): r["frozen_scale"]
              for r in schedule if r["phase"] != "special"}
    card = describe(tuned, f"{loaded.card.name}-lnfree", str(model_folder), loaded.card.kind,
                    extra={"lnfree": True, "big_eps": s.big_eps, "base_model": loaded.card.name, "first_token": s.first_token,
                           "norm_kind": spec.norm_kind, "frozen_scale": frozen})
    target = Path(out_dir) / "model_lnfree" if out_dir is not None else Path(tempfile.mkdtemp(prefix="lnfree-"))
    save_model_folder(target, tuned, loaded.tokenizer, card)
    stock = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    return LoadedModel(stock, loaded.tokenizer, card), target
