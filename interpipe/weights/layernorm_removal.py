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

**First position.** Models with a massive activation at position 0 (SmolLM2: RMS ~970 there against
~10 elsewhere; GPT-2's first token likewise) cannot share one frozen scale between position 0 and the
rest. With ``first_token_scale`` ``always`` (``auto``: when position 0's mean scale is over
``first_token_outlier`` times the others' at some norm, measured on the calibration texts) position 0
keeps its own frozen scale (the official recipe's ``bos_std``) while the norms are frozen; over the
``extra_steps`` it is blended geometrically into the shared scale and merged at the last step, since a
stock norm has one scale. Without it, scales are averaged over every real token.

Choices here (the paper has more): ln_1 is not split into its Q/K and V uses; no auxiliary loss.
Evaluation (CE with paired intervals against the LN-kept control, DLA exactness and DLA agreement with
the original) lives in :mod:`interpipe.weights.lnfree_eval`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interpipe.models.arch import UnsupportedArchitecture
from interpipe.models.loading import LoadedModel
from interpipe.divergence import DivergenceGuard
from interpipe.weights.checkpoint import (batch_generator, checkpoint_file, fingerprint, load_checkpoint,
                                          optimizer_tensors, remove_checkpoint, restore_optimizer, save_checkpoint)
from interpipe.weights.common import architecture, token_losses
from interpipe.weights.result import StudyResult

EPS_NAMES = ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "norm_eps")


def norm_eps(norm: torch.nn.Module) -> float:
    """The epsilon of an HF norm module (``eps`` of ``nn.LayerNorm``, ``variance_epsilon`` of RMSNorms)."""
    eps = getattr(norm, "eps", None)
    return float(eps if eps is not None else norm.variance_epsilon)


class FrozenScaleNorm(torch.nn.Module):
    """A LayerNorm or RMSNorm whose per-token scale is tracked (moving average over real tokens) and
    can be frozen to that average. ``token_mask`` (batch, pos), set by :func:`set_token_mask`, marks
    the real tokens of the next forward; without it every position counts.

    With ``split_first`` the first position's scale is tracked and frozen on its own (``avg_first``;
    the official recipe's BOS std) and ``avg_std`` covers the other positions; ``first_mix`` in [0, 1]
    blends the frozen first-position scale geometrically into the shared one (1: merged), which is
    how it is released before the model is saved. ``first_mean``/``rest_mean`` always accumulate the
    mean scale at position 0 and elsewhere (tracked forwards), to detect an outlying first position."""

    def __init__(self, norm: torch.nn.Module, ema: float, kind: str = "layernorm", offset_one: bool = False,
                 stat: str = "mean", split_first: bool = False):
        super().__init__()
        self.stat = stat  # "mean" or "max" of the real tokens' scales per forward
        self.weight, self.bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        self.centre, self.offset_one, self.eps, self.ema = kind == "layernorm", offset_one, norm_eps(norm), ema
        self.__dict__["original"] = norm  # the HF module, restored by unwrap_to_lnfree (not a submodule)
        self.register_buffer("avg_std", torch.zeros(()))
        self.register_buffer("avg_first", torch.zeros(()))
        self.register_buffer("first_mix", torch.zeros(()))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("split_first", torch.tensor(bool(split_first)))
        self.track = False  # update the moving average on each forward
        self.token_mask: torch.Tensor | None = None
        self.first_mean, self.rest_mean = [], []

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            x = x * (self.weight + 1.0 if self.offset_one else self.weight)
        return x + self.bias if self.bias is not None else x

    def frozen_scales(self) -> torch.Tensor:
        """The frozen scale of position 0 and of the others, (2,)."""
        if not bool(self.split_first):
            return torch.stack([self.avg_std, self.avg_std])
        first = self.avg_first ** (1 - self.first_mix) * self.avg_std ** self.first_mix  # geometric blend
        return torch.stack([first, self.avg_std])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(-1, keepdim=True) if self.centre else x  # (batch, pos, d_model)
        if bool(self.frozen):
            first, rest = self.frozen_scales()
            if bool(self.split_first) and xc.shape[1] > 1:
                return self._affine(torch.cat([xc[:, :1] / first, xc[:, 1:] / rest], dim=1))  # (batch, pos, d_model)
            return self._affine(xc / (first if xc.shape[1] == 1 and bool(self.split_first) else rest))
        scale = (xc.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # (batch, pos, 1)
        if self.track:
            self._update(scale[..., 0].detach())
        return self._affine((xc / scale).to(x.dtype))

    def _reduce(self, real: torch.Tensor) -> torch.Tensor:
        return real.max() if self.stat == "max" else real.mean()

    def _ema(self, buffer: torch.Tensor, now: torch.Tensor) -> None:
        buffer.copy_(now if float(buffer) == 0 else self.ema * buffer + (1 - self.ema) * now)

    @torch.no_grad()
    def _update(self, scale: torch.Tensor) -> None:  # scale: (batch, pos)
        mask = self.token_mask
        mask = mask.to(scale.device) if mask is not None and mask.shape == scale.shape else torch.ones_like(scale, dtype=torch.bool)
        if scale.shape[1] > 1:
            self.first_mean.append(float(scale[:, 0][mask[:, 0]].mean()))
            self.rest_mean.append(float(scale[:, 1:][mask[:, 1:]].mean()))
        if bool(self.split_first) and scale.shape[1] > 1:
            self._ema(self.avg_first, self._reduce(scale[:, 0][mask[:, 0]]))
            self._ema(self.avg_std, self._reduce(scale[:, 1:][mask[:, 1:]]))
        else:
            self._ema(self.avg_std, self._reduce(scale[mask]))

    def first_ratio(self) -> float:
        """Mean scale at position 0 over the mean scale elsewhere, over the tracked forwards (nan if none)."""
        if not self.rest_mean:
            return float("nan")
        return float(sum(self.first_mean) / max(sum(self.rest_mean), 1e-12))


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


def require_float32(model, lr: float) -> None:
    """Refuse to fine-tune a half-precision model, before any work: the weights are the optimiser's own
    parameters, and a bfloat16 weight ``w`` moves only in steps of about ``2^-8 |w|``, so AdamW's steps of
    about ``lr`` vanish in the rounding (GPT-2's lr of 6e-5 against weights of ~0.1)."""
    dtype = next(model.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        raise ValueError(f"the lnfree study fine-tunes every weight of the model, and in {str(dtype).split('.')[-1]} "
                         f"AdamW's steps (about lr={lr:g}) fall below the weights' rounding step (2^-8 of each "
                         f"weight in bfloat16), so most updates would be lost; use dtype=float32 for lnfree")


def layernorm_schedule(model) -> list[str]:
    """Norm module paths in removal order: each block's MLP norm, each block's attention norm, the final norm."""
    spec = lnfree_architecture(model)
    names = [b.mlp_norm for b in spec.blocks] + [b.attn_norm for b in spec.blocks] + [spec.final_norm]
    return list(dict.fromkeys(names))


def wrap_layernorms(model, names: list[str], ema: float, stat: str = "mean",
                    split_first: bool = False) -> dict[str, FrozenScaleNorm]:
    """Replace the named norms by :class:`FrozenScaleNorm` (same parameters, scale statistic ``stat``,
    first position's scale on its own with ``split_first``), in place."""
    spec = architecture(model, "lnfree")
    out = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        wrapped = FrozenScaleNorm(model.get_submodule(name), ema, spec.norm_kind, spec.norm_offset_one, stat, split_first)
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
        if bool(norm.split_first) and float(norm.first_mix) < 1:
            raise ValueError(f"norm {name} still has its own first-position scale (a stock norm has one scale); "
                             f"release it first (first_mix = 1)")
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
                    freeze: bool = True, split_first: bool = False):
    """Fine-tune a copy of ``model`` while freezing its LNs on the schedule; returns
    (model with frozen wrappers, wrappers by name, curve rows, schedule rows). ``freeze=False`` is the
    control: the same steps and batches with every LN left normalising. ``split_first``: the first
    position keeps its own frozen scale until the extra steps, over which it is blended into the
    shared one (merged at the last step), so the saved model needs one scale per norm."""
    model = copy.deepcopy(model)
    model.eval()  # no dropout; the wrappers track their std through ``track``
    names = layernorm_schedule(model)
    wrapped = wrap_layernorms(model, names, s.ema, s.scale_stat, split_first and freeze)
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
    guard = _lnfree_guard(s, freeze, checkpoint_dir)
    last_freeze = max(freeze_at, default=0)
    for step in tqdm(range(start, total), desc=guard.loop, initial=start, total=total):
        for name in freeze_at.get(step, ()):
            wrapped[name].frozen.fill_(True)
            guard.statistics(step, {f"{name}'s frozen scale": wrapped[name].frozen_scales()})
        if step > last_freeze:  # extra steps: release the first position's own scale gradually
            for ln in wrapped.values():
                ln.first_mix.fill_((step - last_freeze) / s.extra_steps)
        idx = torch.randint(len(ids), (s.batch_size,), generator=batch_generator(seed, step))
        loss = _lnfree_step(model, wrapped, ids[idx], mask[idx], device, opt, guard, step)
        curve.append({"step": step, "loss": loss, "n_frozen": sum(bool(w.frozen) for w in wrapped.values())})
        if checkpoint_dir and (step + 1) % s.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(checkpoint_dir, {**{f"model/{k}": v for k, v in model.state_dict().items()},
                                             **optimizer_tensors(opt, param_names)},
                            {"fingerprint": key, "step": step + 1, "curve": curve})
    for ln in wrapped.values():
        ln.track = False
        ln.first_mix.fill_(1.0)  # released (a no-op without split_first)
    set_token_mask(wrapped, None)
    opt.zero_grad(set_to_none=True)  # free the gradients before the next copy is fine-tuned
    schedule = [{"step": step, "layernorm": name, "frozen_std": float(wrapped[name].avg_std)}
                for step, group in sorted(freeze_at.items()) for name in group]
    return model, wrapped, curve, schedule


def _lnfree_guard(s, freeze: bool, checkpoint_dir: Path | None) -> DivergenceGuard:
    fix = (f"lower weights.lnfree.lr (now {s.lr}), raise weights.lnfree.gap (now {s.gap}) or lower "
           f"weights.lnfree.norms_per_step (now {s.norms_per_step}); scale_stat={s.scale_stat!r} "
           "('max' where the mean overflows)")
    return DivergenceGuard("LayerNorm removal" if freeze else "fine-tune control (LN kept)", fix,
                           checkpoint_file(checkpoint_dir) if checkpoint_dir else None)


def _lnfree_step(model, wrapped: dict[str, FrozenScaleNorm], ids: torch.Tensor, mask: torch.Tensor,
                 device: torch.device, opt: torch.optim.Optimizer, guard: DivergenceGuard, step: int) -> float:
    """One fine-tuning step on the batch ``ids``/``mask`` (B, T); returns its loss. Stops (through
    ``guard``) at a non-finite loss or gradient before the weights are updated."""
    width = int(mask.sum(1).max())
    b_ids, b_mask = ids[:, :width].to(device), mask[:, :width].to(device)  # (B, T)
    set_token_mask(wrapped, b_mask)  # scales averaged over real tokens only
    loss = token_losses(model(input_ids=b_ids, attention_mask=b_mask).logits, b_ids, b_mask).mean()
    value = guard.loss(step, loss)
    opt.zero_grad()
    loss.backward()
    guard.gradients(step, (p for group in opt.param_groups for p in group["params"]))
    opt.step()
    return value


class LNFreeResult(StudyResult):
    """LN-free fine-tuning: schedule, loss curve, CE before/after, DLA exactness."""

    study = "lnfree"

    def plot(self) -> dict:
        from interpipe.weights.plots import plot_lnfree

        return plot_lnfree(self)


def run_lnfree(loaded, model_folder, data_root, s, seed: int = 0, batch_size: int = 64, out_dir=None,
               checkpoint_dir=None) -> LNFreeResult:
    """Remove every norm of ``loaded`` by fine-tuning; save the LN-free folder; compare it, reloaded
    with stock ``transformers``, with the original and the LN-kept control.

    Refuses unsupported architectures (naming the ``model_type``) and half-precision models before any work.
    """
    import pandas as pd

    from interpipe.weights.lnfree_eval import compare_models, headline_frame, task_list

    require_float32(loaded.model, s.lr)
    spec = lnfree_architecture(loaded.model)
    tasks = task_list(data_root, s.tasks)
    train, valid, ids, mask = _corpus(loaded, data_root, s)
    naive, ratio, split = _frozen_baseline(loaded, list(train[: s.n_calibration]), s, batch_size)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    tuned, wrapped, curve, schedule = finetune_lnfree(loaded.model, ids, mask, s, seed, ckpt, split_first=split)
    control = _control(loaded.model, ids, mask, s, seed, ckpt, curve) if s.control else None
    unwrap_to_lnfree(tuned, wrapped, s.big_eps)
    lnfree, target = _save_and_reload(tuned, loaded, model_folder, spec, schedule, s, out_dir)
    del tuned  # what is evaluated is the reloaded folder; one 135M copy fewer in memory
    models = [("original", loaded), ("lnfree", lnfree)]
    if control is not None:
        models.append(("control", LoadedModel(control, loaded.tokenizer, loaded.card)))
    models.append(("frozen_no_finetune", LoadedModel(naive, loaded.tokenizer, loaded.card)))
    metrics, tables = compare_models(models, data_root, tasks, valid, batch_size)
    metrics.update({"first_token_ratio": ratio, "first_token_scale_used": int(split)})
    info = {"model": loaded.card.name, "seed": seed, "settings": asdict(s), "architecture": spec.to_dict(),
            "saved_model": target.name if out_dir is not None else str(target)}
    if ckpt:
        remove_checkpoint(ckpt / "control")
        remove_checkpoint(ckpt)
    tables.update({"training_curve": pd.DataFrame(curve), "schedule": pd.DataFrame(schedule),
                   "headline": headline_frame(loaded.card.name, metrics)})
    return LNFreeResult(metrics, tables, {}, info)


def _corpus(loaded, data_root, s):
    """Training texts, held-out texts and the training token ids (N, T) with their mask."""
    from interpipe.data import load_task
    from interpipe.weights.common import encode_texts

    train = load_task(data_root, "corpus", "train")["text"]
    valid = list(load_task(data_root, "corpus", "validation")["text"])
    train = train[: s.max_train_texts] if s.max_train_texts else train
    valid = valid[: s.max_eval_texts] if s.max_eval_texts else valid
    ids, mask = encode_texts(loaded.tokenizer, list(train), loaded.model)  # (N, T)
    if s.max_tokens:
        ids, mask = ids[:, : s.max_tokens], mask[:, : s.max_tokens]  # each text's first max_tokens tokens
    return train, valid, ids, mask


def _frozen_baseline(loaded, texts: list[str], s, batch_size: int):
    """The baseline without fine-tuning (every scale frozen at its real-token average), which also
    measures whether position 0's scale is an outlier (then kept apart under setting "auto").

    Returns ``(frozen model, first-token ratio, whether the first-token scale is kept apart)``.
    """
    naive, ratio = calibrated_copy(loaded.model, loaded.tokenizer, texts, s, batch_size, split_first=True)
    split = s.first_token_scale == "always" or (s.first_token_scale == "auto" and ratio > s.first_token_outlier)
    if not split:
        naive, _ = calibrated_copy(loaded.model, loaded.tokenizer, texts, s, batch_size, split_first=False)
    return naive, ratio, split


def _control(model, ids, mask, s, seed: int, ckpt: Path | None, curve: list[dict]):
    """The LN-kept control, fine-tuned the same steps; its loss joins ``curve`` as ``control_loss``."""
    control, _, control_curve, _ = finetune_lnfree(model, ids, mask, s, seed, ckpt / "control" if ckpt else None,
                                                   freeze=False)
    for row, other in zip(curve, control_curve):
        row["control_loss"] = other["loss"]
    return control


def _save_and_reload(tuned, loaded, model_folder, spec, schedule: list[dict], s, out_dir):
    """Save the LN-free folder and load it back with stock ``transformers`` (what is evaluated)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from interpipe.models import describe, save_model_folder

    card = describe(tuned, f"{loaded.card.name}-lnfree", str(model_folder), loaded.card.kind,
                    extra={"lnfree": True, "big_eps": s.big_eps, "base_model": loaded.card.name, "norm_kind": spec.norm_kind,
                           "frozen_std": {r["layernorm"]: r["frozen_std"] for r in schedule}})
    target = Path(out_dir) / "model_lnfree" if out_dir is not None else Path(tempfile.mkdtemp(prefix="lnfree-"))
    save_model_folder(target, tuned, loaded.tokenizer, card)
    stock = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    return LoadedModel(stock, loaded.tokenizer, card), target


def calibrated_copy(model, tokenizer, texts: list[str], s, batch_size: int, split_first: bool):
    """A copy of ``model`` with every norm frozen at its real-token average over ``texts`` (no
    fine-tuning), and the largest ratio over norms of position 0's mean scale to the others'."""
    naive = copy.deepcopy(model).eval()
    wrapped = wrap_layernorms(naive, layernorm_schedule(naive), s.ema, s.scale_stat, split_first)
    calibrate(naive, wrapped, tokenizer, texts, batch_size)
    ratios = [w.first_ratio() for w in wrapped.values()]
    return naive, max((r for r in ratios if r == r), default=float("nan"))
