"""LayerNorm removal by fine-tuning: a model whose norms no longer normalise.

Baroni et al., *Transformers Don't Need LayerNorm at Inference Time* (2025, arXiv 2507.02559;
submarat/removing-layer-norm). Each norm's per-token scale — LayerNorm's ``std(x)`` of
``(x - mean x) / std(x) * g + b``, RMSNorm's ``rms(x)`` of ``x / rms(x) * g`` — becomes a frozen
scalar: the moving average of the scale measured while fine-tuning, over real (non-padding) tokens
only (``scale_stat: max``: the largest real-token scale, so that no token reaches a block larger than
it did with the norm; for models whose first position carries a massive activation, e.g. SmolLM2's
~100x larger RMS there, where the mean would blow the first position up block after block). Norms
are frozen on a schedule, ``norms_per_step`` at a time, ``gap`` steps apart after
``start_step``: the MLP norm of every block, then the attention norm of every block, then the final
norm; the model keeps fine-tuning on next-token loss throughout and ``extra_steps`` after the last.

The norms come from :func:`interpipe.models.arch.describe_architecture` (GPT-2, GPT-NeoX, OPT:
LayerNorm; Llama, Qwen2: RMSNorm); post-LN and non-causal models are refused before any work, as are
models whose norm epsilon is not a config key (the saved folder could not carry it).

The result is saved as an ordinary HF model folder that stock ``from_pretrained`` loads: each norm
keeps its class, gets ``eps = big_eps`` (``sqrt(scale^2 + eps) ~ sqrt(eps)``, relative error
``scale^2 / (2 eps)``; Llama-style configs have one ``rms_norm_eps`` for every norm) and gain
``g sqrt(eps) / scale``.

Choices here (the paper has more): ln_1 is not split into its Q/K and V uses; no special handling of
the BOS position and no auxiliary loss. Reported: CE loss before/after on held-out text (next to a
control fine-tuned the same steps with the norms kept) and on each task, and direct-logit-attribution
exactness — the sum of component contributions against the logit, and each component's DLA against
its true direct effect (logit change when its output is removed from the final residual stream with
the final norm recomputed), which only the LN-free model makes equal.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interpipe.models.arch import UnsupportedArchitecture
from interpipe.weights.common import (StudyResult, architecture, batch_generator, fingerprint, load_checkpoint,
                                      optimizer_tensors, remove_checkpoint, restore_optimizer, save_checkpoint,
                                      token_losses)

EPS_NAMES = ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "norm_eps")


def norm_eps(norm: torch.nn.Module) -> float:
    """The epsilon of an HF norm module (``eps`` of ``nn.LayerNorm``, ``variance_epsilon`` of RMSNorms)."""
    eps = getattr(norm, "eps", None)
    return float(eps if eps is not None else norm.variance_epsilon)


class FrozenScaleNorm(torch.nn.Module):
    """A LayerNorm or RMSNorm whose per-token scale is tracked (moving average over real tokens) and
    can be frozen to that average. ``token_mask`` (batch, pos), set by :func:`set_token_mask`, marks
    the real tokens of the next forward; without it every position counts."""

    def __init__(self, norm: torch.nn.Module, ema: float, kind: str = "layernorm", offset_one: bool = False,
                 stat: str = "mean"):
        super().__init__()
        self.stat = stat  # "mean" or "max" of the real tokens' scales per forward
        self.weight, self.bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        self.centre, self.offset_one, self.eps, self.ema = kind == "layernorm", offset_one, norm_eps(norm), ema
        self.__dict__["original"] = norm  # the HF module, restored by unwrap_to_lnfree (not a submodule)
        self.register_buffer("avg_std", torch.zeros(()))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.track = False  # update the moving average on each forward
        self.token_mask: torch.Tensor | None = None

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            x = x * (self.weight + 1.0 if self.offset_one else self.weight)
        return x + self.bias if self.bias is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(-1, keepdim=True) if self.centre else x  # (batch, pos, d_model)
        if bool(self.frozen):
            return self._affine(xc / self.avg_std)
        scale = (xc.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # (batch, pos, 1)
        if self.track:
            self._update(scale[..., 0].detach())
        return self._affine((xc / scale).to(x.dtype))

    @torch.no_grad()
    def _update(self, scale: torch.Tensor) -> None:  # scale: (batch, pos)
        mask = self.token_mask
        real = scale[mask.to(scale.device)] if mask is not None and mask.shape == scale.shape else scale.flatten()
        now = real.max() if self.stat == "max" else real.mean()
        self.avg_std.copy_(now if float(self.avg_std) == 0 else self.ema * self.avg_std + (1 - self.ema) * now)


FrozenStdLayerNorm = FrozenScaleNorm  # the LayerNorm case, by its earlier name


def set_token_mask(wrapped: dict[str, FrozenScaleNorm], mask: torch.Tensor | None) -> None:
    """Mark the real (non-padding) tokens, (batch, pos), of the next forward for every wrapper."""
    for norm in wrapped.values():
        norm.token_mask = None if mask is None else mask.bool()


def lnfree_architecture(model):
    """The model's :class:`ArchSpec`, refusing what LN removal cannot do, before any work."""
    spec = architecture(model, "lnfree", refuses=("post_ln",))
    if spec.final_norm is None:
        raise UnsupportedArchitecture(f"the lnfree study needs a final norm; model_type={spec.model_type!r} has none")
    if not any(hasattr(model.config, key) for key in EPS_NAMES):
        raise UnsupportedArchitecture(
            f"the lnfree study saves the LN-free model with a huge norm epsilon read from the config, but "
            f"model_type={spec.model_type!r} has no norm-epsilon config key ({', '.join(EPS_NAMES)}): its norms "
            f"hard-code eps, so stock from_pretrained could not reload the LN-free folder")
    return spec


def layernorm_schedule(model) -> list[str]:
    """Norm module paths in removal order: each block's MLP norm, each block's attention norm, the final norm."""
    spec = lnfree_architecture(model)
    names = [b.mlp_norm for b in spec.blocks] + [b.attn_norm for b in spec.blocks] + [spec.final_norm]
    return list(dict.fromkeys(names))


def wrap_layernorms(model, names: list[str], ema: float, stat: str = "mean") -> dict[str, FrozenScaleNorm]:
    """Replace the named norms by :class:`FrozenScaleNorm` (same parameters, scale statistic ``stat``), in place."""
    spec = architecture(model, "lnfree")
    out = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        wrapped = FrozenScaleNorm(model.get_submodule(name), ema, spec.norm_kind, spec.norm_offset_one, stat)
        setattr(model.get_submodule(parent), child, wrapped)
        out[name] = wrapped
    return out


@torch.no_grad()
def unwrap_to_lnfree(model, wrapped: dict[str, FrozenScaleNorm], big_eps: float) -> None:
    """Put the original norm modules back with ``eps = big_eps`` and gain ``g sqrt(big_eps) / scale``,
    so the saved folder loads with stock ``transformers`` (the config's epsilon keys are set too)."""
    for name, norm in wrapped.items():
        if not bool(norm.frozen):
            raise ValueError(f"norm {name} was never frozen; lengthen the schedule")
    for name, norm in wrapped.items():
        plain, factor = norm.original, big_eps ** 0.5 / norm.avg_std
        if plain.weight is None:
            raise UnsupportedArchitecture(f"norm {name} has no gain to carry the frozen scale")
        gain = (plain.weight + 1.0) * factor - 1.0 if norm.offset_one else plain.weight * factor
        plain.weight.copy_(gain)
        setattr(plain, "eps" if hasattr(plain, "eps") else "variance_epsilon", big_eps)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, plain)
    for key in EPS_NAMES:
        if hasattr(model.config, key):
            setattr(model.config, key, big_eps)


@torch.no_grad()
def calibrate(model, wrapped: dict[str, FrozenScaleNorm], tokenizer, texts: list[str], batch_size: int) -> None:
    """Track every wrapped norm's scale over the real tokens of ``texts``, then freeze them all."""
    from interpipe.weights.common import encode_texts, model_device

    for norm in wrapped.values():
        norm.track = True
    for i in range(0, len(texts), batch_size):
        ids, mask = encode_texts(tokenizer, texts[i:i + batch_size], model)
        set_token_mask(wrapped, mask)
        model(input_ids=ids.to(model_device(model)), attention_mask=mask.to(model_device(model)))
    set_token_mask(wrapped, None)
    for norm in wrapped.values():
        norm.track = False
        norm.frozen.fill_(True)


def finetune_lnfree(model, ids: torch.Tensor, mask: torch.Tensor, s, seed: int, checkpoint_dir: Path | None = None,
                    freeze: bool = True):
    """Fine-tune a copy of ``model`` while freezing its LNs on the schedule; returns
    (model with frozen wrappers, wrappers by name, curve rows, schedule rows). ``freeze=False`` is the
    control: the same steps and batches with every LN left normalising."""
    model = copy.deepcopy(model)
    model.eval()  # no dropout; the wrappers track their std through ``track``
    names = layernorm_schedule(model)
    wrapped = wrap_layernorms(model, names, s.ema, s.scale_stat)
    groups = [names[i:i + s.norms_per_step] for i in range(0, len(names), s.norms_per_step)]
    freeze_at = {s.start_step + k * s.gap: group for k, group in enumerate(groups)} if freeze else {}
    total = s.start_step + (len(groups) - 1) * s.gap + 1 + s.extra_steps
    params = [p for p in model.parameters() if p.requires_grad]
    param_names = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0, fused=True)  # one kernel for every parameter
    key = fingerprint(asdict(s), seed, len(ids), names, freeze)
    start, curve = 0, []
    resumed = load_checkpoint(checkpoint_dir, key) if checkpoint_dir else None
    if resumed:
        tensors, state = resumed
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, strict=False)
        restore_optimizer(opt, param_names, tensors)
        start, curve = state["step"], state["curve"]
    device = next(model.parameters()).device
    for ln in wrapped.values():
        ln.track = True
    desc = "LayerNorm removal" if freeze else "fine-tune control (LN kept)"
    for step in tqdm(range(start, total), desc=desc, initial=start, total=total):
        for name in freeze_at.get(step, ()):
            wrapped[name].frozen.fill_(True)
        idx = torch.randint(len(ids), (s.batch_size,), generator=batch_generator(seed, step))
        m = mask[idx]
        width = int(m.sum(1).max())
        b_ids, b_mask = ids[idx, :width].to(device), m[:, :width].to(device)  # (B, T)
        set_token_mask(wrapped, b_mask)  # scales averaged over real tokens only
        loss = token_losses(model(input_ids=b_ids, attention_mask=b_mask).logits, b_ids, b_mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append({"step": step, "loss": loss.item(), "n_frozen": sum(bool(w.frozen) for w in wrapped.values())})
        if checkpoint_dir and (step + 1) % s.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(checkpoint_dir, {**{f"model/{k}": v for k, v in model.state_dict().items()},
                                             **optimizer_tensors(opt, param_names)},
                            {"fingerprint": key, "step": step + 1, "curve": curve})
    for ln in wrapped.values():
        ln.track = False
    set_token_mask(wrapped, None)
    opt.zero_grad(set_to_none=True)  # free the gradients before the next copy is fine-tuned
    schedule = [{"step": step, "layernorm": name, "frozen_std": float(wrapped[name].avg_std)}
                for step, group in sorted(freeze_at.items()) for name in group]
    return model, wrapped, curve, schedule


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
def dla_exactness(model, tokenizer, folder, prompts: list[str], answers: list[str], batch_size: int = 64) -> dict:
    """Direct logit attribution of the answer logit at the final position, checked two ways.

    Components: the embeddings and every block's attention and MLP output (the outputs of the modules
    the :class:`ArchSpec` names). With the final norm's per-token scale, ``sum_k DLA_k + b`` reproduces
    the logit (``dla_sum_*``); the true direct effect of ``k`` (logit minus logit with ``k`` removed and
    the norm recomputed) equals ``DLA_k`` only when the norm does not normalise (``dla_vs_direct_*``).
    LayerNorm centres before scaling, RMSNorm does not. ``folder`` is unused (kept for callers).
    """
    from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
    from interpipe.weights.common import norm_gain

    spec = architecture(model, "lnfree")
    final = model.get_submodule(spec.final_norm)
    gain, eps = norm_gain(model, spec, spec.final_norm), norm_eps(final)  # (d_model,)
    bias = final.bias.detach().float().cpu() if getattr(final, "bias", None) is not None else torch.zeros(spec.d_model)
    centre = (lambda r: r - r.mean(-1, keepdim=True)) if spec.norm_kind == "layernorm" else (lambda r: r)  # noqa: E731
    W_U, b_U = _unembedding(model, spec)
    sums, diffs, scale_dla = [], [], []
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
    sums, diffs, scale_dla = torch.cat(sums), torch.cat(diffs), torch.cat(scale_dla)
    return {"dla_sum_max_abs": float(sums.max()), "dla_sum_mean_abs": float(sums.mean()),
            "dla_vs_direct_mean_abs": float(diffs.mean()), "dla_vs_direct_max_abs": float(diffs.max()),
            "dla_vs_direct_relative": float(diffs.mean() / scale_dla.mean().clamp(min=1e-12))}


class LNFreeResult(StudyResult):
    """LN-free fine-tuning: schedule, loss curve, CE before/after, DLA exactness."""

    study = "lnfree"

    def plot(self) -> dict:
        from interpipe.weights.plots import plot_lnfree

        return plot_lnfree(self)


def run_lnfree(loaded, model_folder, data_root, s, seed: int = 0, batch_size: int = 64, out_dir=None,
               checkpoint_dir=None) -> LNFreeResult:
    """Remove every norm of ``loaded`` by fine-tuning; save the LN-free folder; compare.

    Refuses unsupported architectures (naming the ``model_type``) before any work.
    """
    import tempfile

    import pandas as pd

    from interpipe.data import load_task
    from interpipe.models import LoadedModel, describe, load_model, save_model_folder
    from interpipe.weights.common import encode_texts

    model, tok = loaded.model, loaded.tokenizer
    spec = lnfree_architecture(model)
    tasks = task_list(data_root, s.tasks)
    train = load_task(data_root, "corpus", "train")["text"]
    valid = list(load_task(data_root, "corpus", "validation")["text"])
    train = train[: s.max_train_texts] if s.max_train_texts else train
    valid = valid[: s.max_eval_texts] if s.max_eval_texts else valid
    ids, mask = encode_texts(tok, list(train), model)
    if s.max_tokens:
        ids, mask = ids[:, : s.max_tokens], mask[:, : s.max_tokens]  # each text's first max_tokens tokens

    # baseline without fine-tuning: every scale frozen at its average over real tokens of a few texts
    naive = copy.deepcopy(model).eval()
    calibrate(naive, wrap_layernorms(naive, layernorm_schedule(naive), s.ema, s.scale_stat), tok, list(train[: s.n_calibration]), batch_size)

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    tuned, wrapped, curve, schedule = finetune_lnfree(model, ids, mask, s, seed, ckpt)
    control = None
    if s.control:
        control, _, control_curve, _ = finetune_lnfree(model, ids, mask, s, seed, ckpt / "control" if ckpt else None, freeze=False)
        for row, other in zip(curve, control_curve):
            row["control_loss"] = other["loss"]
    unwrap_to_lnfree(tuned, wrapped, s.big_eps)
    card = describe(tuned, f"{loaded.card.name}-lnfree", str(model_folder), loaded.card.kind,
                    extra={"lnfree": True, "big_eps": s.big_eps, "base_model": loaded.card.name, "norm_kind": spec.norm_kind,
                           "frozen_std": {r["layernorm"]: r["frozen_std"] for r in schedule}})
    target = Path(out_dir) / "model_lnfree" if out_dir is not None else Path(tempfile.mkdtemp(prefix="lnfree-"))
    save_model_folder(target, tuned, tok, card)
    lnfree = load_model(target)  # evaluate what was saved

    models = [("original", loaded, model_folder), ("lnfree", lnfree, target)]
    if control is not None:
        models.append(("control", LoadedModel(control, tok, loaded.card), model_folder))
    metrics, tasks_frame, dla_rows = evaluate_models(models, data_root, tasks, valid, batch_size)
    from interpipe.weights.common import corpus_loss

    metrics["ce_frozen_no_finetune"] = corpus_loss(naive, tok, valid, batch_size)
    metrics["ce_delta"] = metrics["ce_lnfree"] - metrics["ce_original"]
    if control is not None:
        metrics["ce_delta_vs_control"] = metrics["ce_lnfree"] - metrics["ce_control"]  # the cost of removing LN itself
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "architecture": spec.to_dict(),
            "saved_model": target.name if out_dir is not None else str(target)}
    if ckpt:
        remove_checkpoint(ckpt / "control")
        remove_checkpoint(ckpt)
    return LNFreeResult(metrics, {"training_curve": pd.DataFrame(curve), "schedule": pd.DataFrame(schedule),
                                  "task_loss": tasks_frame, "dla_exactness": pd.DataFrame(dla_rows)}, {}, info)


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
def task_metrics(lm, data_root, task: str, batch_size: int) -> dict[str, float]:
    """Loss, accuracy and logit difference of a causal LM on ``task``'s test split, as
    :func:`interpipe.evaluate.evaluate_task` defines them (only the final positions are unembedded)."""
    from interpipe.data import load_task
    from interpipe.evaluate import _scores
    from interpipe.models.tokens import answer_token_id, context_length, encode_prompts
    from interpipe.weights.common import final_position_logits

    rows, tok, spec = load_task(data_root, task, "test"), lm.tokenizer, architecture(lm.model, "lnfree")
    logits = []
    for i in range(0, len(rows), batch_size):
        ids, mask, last = encode_prompts(tok, rows["prompt"][i:i + batch_size], context_length(lm.model))
        logits.append(final_position_logits(lm.model, spec, ids, last, mask).float().cpu())  # (b, V)
    ids_of = lambda words: torch.tensor([answer_token_id(tok, w) for w in words])  # noqa: E731
    return _scores(torch.cat(logits), ids_of(rows["answer"]), ids_of(rows["foil"]))


def evaluate_models(models, data_root, tasks: list[str], valid: list[str], batch_size: int):
    """CE on held-out text, task loss/accuracy and (not for the control) DLA exactness of each
    ``(name, loaded, folder)``; returns (metrics, task frame, DLA rows)."""
    import pandas as pd

    from interpipe.data import load_task
    from interpipe.weights.common import corpus_loss

    rows, dla_rows, metrics = [], [], {}
    for name, lm, folder in models:
        metrics[f"ce_{name}"] = corpus_loss(lm.model, lm.tokenizer, valid, batch_size)
        prompts, answers = [], []
        for task in tasks:
            res = task_metrics(lm, data_root, task, batch_size)
            rows.append({"model": name, "task": task, **res})
            test = load_task(data_root, task, "test")
            prompts += list(test["prompt"][:32])
            answers += list(test["answer"][:32])
        if name == "control" or not prompts:
            continue
        dla = dla_exactness(lm.model, lm.tokenizer, folder, prompts, answers, batch_size)
        dla_rows.append({"model": name, **dla})
        metrics.update({f"{k}_{name}": v for k, v in dla.items()})
    frame = pd.DataFrame(rows)
    for task in tasks:
        sub = frame[frame["task"] == task].set_index("model")
        metrics[f"{task}_loss_delta"] = float(sub.loc["lnfree", "loss"] - sub.loc["original", "loss"])
        metrics[f"{task}_accuracy_original"] = float(sub.loc["original", "accuracy"])
        metrics[f"{task}_accuracy_lnfree"] = float(sub.loc["lnfree", "accuracy"])
        if "control" in sub.index:
            metrics[f"{task}_accuracy_control"] = float(sub.loc["control", "accuracy"])
    return metrics, frame, dla_rows
