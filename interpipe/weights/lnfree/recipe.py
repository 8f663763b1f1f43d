"""The fine-tuning loop that removes the norms: calibrate, find special positions, freeze on the schedule.

Baroni et al. 2025 (arXiv 2507.02559; submarat/removing-layer-norm): AdamW with linear warm-up and
cosine decay (lr 6e-4 to 3e-4 over 300 steps for GPT-2 small), weight decay 0.01, gradient clipping
1.0, and an optional auxiliary loss keeping each token's scale near the mean. Each step: apply the
schedule's events due (:mod:`interpipe.weights.lnfree.schedule`), one batch of next-token loss, the
divergence guard's checks, the optimiser step. A resumable checkpoint is written every
``checkpoint_minutes`` of wall time.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from interpipe.divergence import DivergenceGuard
from interpipe.models.arch import UnsupportedArchitecture
from interpipe.weights.checkpoint import (batch_generator, checkpoint_file, fingerprint, load_checkpoint,
                                          optimizer_tensors, restore_optimizer, save_checkpoint)
from interpipe.weights.common import architecture, encode_texts, model_device, token_losses
from interpipe.weights.lnfree.fake_norm import EPS_NAMES, FakeNorm, set_token_mask, wrap_norms
from interpipe.weights.lnfree.schedule import Removal, events_at, removal_schedule, total_steps


def lnfree_architecture(model):
    """The model's :class:`ArchSpec`, refusing what norm removal cannot do, before any work."""
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
    """Refuse to fine-tune a half-precision model, before any work: a bfloat16 weight ``w`` moves only in
    steps of about ``2^-8 |w|``, so AdamW's steps of about ``lr`` vanish in the rounding."""
    dtype = next(model.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        raise ValueError(f"the lnfree study fine-tunes every weight of the model, and in {str(dtype).split('.')[-1]} "
                         f"AdamW's steps (about lr={lr:g}) fall below the weights' rounding step (2^-8 of each "
                         f"weight in bfloat16), so most updates would be lost; use dtype=float32 for lnfree")


def norm_groups(spec) -> SimpleNamespace:
    """The norms by phase: ``mlp`` and ``attn`` (one per block) and ``final``."""
    return SimpleNamespace(mlp=[b.mlp_norm for b in spec.blocks],
                           attn=[b.attn_norm for b in spec.blocks if b.attn_norm != b.mlp_norm], final=spec.final_norm)


def schedule_of(model, s, special: tuple[int, ...]) -> list[Removal]:
    """The removal events for ``model`` under settings ``s``."""
    return removal_schedule(norm_groups(lnfree_architecture(model)), s, special)


def lr_at(step: int, total: int, s) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(total - 1 - s.warmup_steps, 1)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * min(step - s.warmup_steps, span) / span))


# --- calibration: scales without fine-tuning, and the special positions ---------------------------------

@torch.no_grad()
def track(model, wrapped: dict[str, FakeNorm], ids: torch.Tensor, mask: torch.Tensor, batch_size: int) -> None:
    """Update every fake norm's running scales over the real tokens of ``ids``/``mask`` (N, T)."""
    device, body = model_device(model), getattr(model, "base_model", model)  # every norm is in the body: no unembedding
    for norm in wrapped.values():
        norm.track = True
    for i in range(0, len(ids), batch_size):
        width = int(mask[i:i + batch_size].sum(1).max())
        b_ids, b_mask = ids[i:i + batch_size, :width].to(device), mask[i:i + batch_size, :width].to(device)  # (b, T)
        set_token_mask(wrapped, b_mask)
        body(input_ids=b_ids, attention_mask=b_mask)
    set_token_mask(wrapped, None)
    for norm in wrapped.values():
        norm.track = False


@torch.no_grad()
def calibrate(model, wrapped: dict[str, FakeNorm], ids: torch.Tensor, mask: torch.Tensor, batch_size: int,
              quantile: float | None) -> None:
    """Track every fake norm's scales over ``ids``/``mask`` (N, T) and start its running statistic at
    the exact mean (or ``quantile``) of all those tokens' scales, not at the last batches' average."""
    for norm in wrapped.values():
        norm.kept = []
    track(model, wrapped, ids, mask, batch_size)
    for norm in wrapped.values():
        norm.avg.copy_(norm.calibration_scale(quantile))
        norm.kept = None


def special_positions(wrapped: dict[str, FakeNorm], factor: float, max_special: int) -> tuple[int, ...]:
    """Position 0, and the positions whose mean scale exceeds ``factor`` times the median over
    positions at some norm (largest first, ``max_special`` in all)."""
    worst: dict[int, float] = {}
    for norm in wrapped.values():
        means = norm.position_means()  # (pos,)
        seen = means[~torch.isnan(means)]
        if len(seen) < 3:
            continue
        ratio = means / seen.median()
        for pos in (ratio > factor).nonzero().flatten().tolist():
            worst[pos] = max(worst.get(pos, 0.0), float(ratio[pos]))
    outliers = sorted((p for p in worst if p != 0), key=lambda p: -worst[p])
    return (0, *outliers[: max_special - 1])


def frozen_copy(model, tokenizer, texts: list[str], s, batch_size: int):
    """A copy of ``model`` with every norm frozen at its calibration scales (no fine-tuning; special
    positions keep their own), the special positions found and the shared scale's statistic chosen.

    Returns ``(model, fake norms, special, quantile, candidates)``: ``quantile`` is None for the mean;
    ``candidates`` has one row per statistic tried (:func:`choose_statistic`).
    """
    ids, mask = encode_texts(tokenizer, texts, model)  # (N, T)
    special = (0,)
    for _ in range(2):  # a second pass when outliers besides position 0 were found
        frozen = copy.deepcopy(model).eval()
        wrapped = wrap_norms(frozen, s.ema, s.split_qkv, special)
        for norm in wrapped.values():
            norm.kept = []
        track(frozen, wrapped, ids, mask, batch_size)
        found = special_positions(wrapped, s.outlier_factor, s.max_special)
        if found == special:
            break
        special = found
    quantile, candidates = choose_statistic(frozen, tokenizer, wrapped, texts, s, batch_size)
    _freeze_all(wrapped, quantile)
    for norm in wrapped.values():
        norm.kept = None
    return frozen, wrapped, special, quantile, candidates


def statistic_candidates(s) -> list[float | None]:
    """The shared-scale statistics to try: the mean (None) and/or quantiles, by ``scale_stat``."""
    return {"mean": [None], "quantile": [s.scale_quantile], "auto": [None, *s.auto_quantiles]}[s.scale_stat]


def choose_statistic(frozen, tokenizer, wrapped: dict[str, FakeNorm], texts: list[str], s, batch_size: int):
    """The statistic of the calibration scales every norm is frozen at: the only candidate, or (``auto``)
    the one whose frozen-only model ``frozen`` has the fewest of the calibration ``texts`` with a
    non-finite loss, then the lowest CE over them (:func:`~interpipe.weights.lnfree.evaluate.text_losses`,
    as the held-out CE). Chosen on the calibration (training) texts; the CE reported is on held-out ones.

    Why a quantile can beat the official mean: a gated MLP (SwiGLU) grows about quadratically in its
    input, so a token divided by less than its own scale is amplified block after block until it
    overflows; GPT-2's GELU MLP grows linearly and the mean is safe there.
    Returns ``(quantile or None, candidates table)``.
    """
    import pandas as pd

    from interpipe.weights.lnfree.evaluate import text_losses

    candidates = statistic_candidates(s)
    if len(candidates) == 1:
        return candidates[0], pd.DataFrame([{"statistic": statistic_name(candidates[0]), "chosen": True}])
    rows = []
    for quantile in candidates:
        _freeze_all(wrapped, quantile)
        nll, count = text_losses(frozen, tokenizer, texts, batch_size)  # (N,) each
        finite = np.isfinite(nll)
        rows.append({"statistic": statistic_name(quantile), "quantile": quantile,
                     "nonfinite_texts": float((~finite).mean()),
                     "ce_finite_texts": float(nll[finite].sum() / count[finite].sum()) if finite.any() else float("nan")})
    table = pd.DataFrame(rows)
    best = table.sort_values(["nonfinite_texts", "ce_finite_texts"], kind="stable").index[0]
    table["chosen"] = table.index == best
    return candidates[best], table


def statistic_name(quantile: float | None) -> str:
    """``"mean"`` or ``"quantile 0.9"``: how the shared frozen scale summarises the tokens' scales."""
    return "mean" if quantile is None else f"quantile {quantile:g}"


def _freeze_all(wrapped: dict[str, FakeNorm], quantile: float | None) -> None:
    for norm in wrapped.values():
        scale = norm.calibration_scale(quantile)
        for use in norm.uses:
            norm.freeze(use, scale)


# --- fine-tuning --------------------------------------------------------------------------------------

def finetune(model, ids: torch.Tensor, mask: torch.Tensor, s, seed: int, special: tuple[int, ...] = (0,),
             checkpoint_dir: Path | None = None, freeze: bool = True, curve: list[dict] | None = None,
             quantile: float | None = None):
    """Fine-tune a copy of ``model`` on rows ``ids``/``mask`` (N, T) while applying the removal schedule;
    each norm tracks the mean (or ``quantile``, :func:`choose_statistic`) of its tokens' scales.

    ``freeze=False`` is the control: the same steps, batches and learning rates, norms kept.
    Returns ``(model with fake norms, fake norms by path, curve rows, schedule rows)``; the curve rows
    are appended to ``curve`` (when given) as they come, so a caller that catches a divergence has them.
    """
    model = copy.deepcopy(model).eval().requires_grad_(True)  # no dropout; every weight trains
    events = schedule_of(model, s, special)
    total = total_steps(events, s.extra_steps)
    wrapped = wrap_norms(model, s.ema, s.split_qkv, special, quantile) if freeze else {}
    due = events_at(events) if freeze else {}
    if wrapped:  # scales before the first freeze: the statistic over the calibration texts (the first rows)
        calibrate(model, wrapped, ids[: s.n_calibration], mask[: s.n_calibration], s.batch_size, quantile)
    params, names = list(model.parameters()), [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, fused=True)  # one kernel for every parameter
    key = fingerprint(asdict(s), seed, len(ids), [e.to_row() for e in events], freeze, quantile)
    start, resumed = _resume(model, opt, names, checkpoint_dir, key)
    curve = curve if curve is not None else []
    curve[:] = resumed
    guard = _guard(s, freeze, checkpoint_dir)
    for norm in wrapped.values():
        norm.track, norm.aux, norm.aux_special_factor = True, s.aux_weight > 0, s.aux_special_factor
    saved_at = time.monotonic()
    for step in tqdm(range(start, total), desc=guard.loop, initial=start, total=total):
        for event in due.get(step, ()):
            _apply(event, wrapped, guard)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, s)
        idx = torch.randint(len(ids), (s.batch_size,), generator=batch_generator(seed, step))
        row = _step(model, wrapped, ids[idx], mask[idx], opt, params, guard, step, s)
        curve.append({"step": step, "lr": opt.param_groups[0]["lr"], **row,
                      "n_events": sum(len(v) for k, v in due.items() if k <= step)})
        if checkpoint_dir and time.monotonic() - saved_at > 60 * s.checkpoint_minutes and step + 1 < total:
            save_checkpoint(checkpoint_dir, {**{f"model/{k}": v for k, v in model.state_dict().items()},
                                             **optimizer_tensors(opt, names)},
                            {"fingerprint": key, "step": step + 1, "curve": curve})
            saved_at = time.monotonic()
    for norm in wrapped.values():
        norm.track, norm.aux, norm.aux_term = False, False, None
    set_token_mask(wrapped, None)
    opt.zero_grad(set_to_none=True)  # free the gradients before the next copy is fine-tuned
    return model, wrapped, curve, [_schedule_row(e, wrapped) for e in events] if freeze else []


def _resume(model, opt, names: list[str], checkpoint_dir: Path | None, key: str) -> tuple[int, list[dict]]:
    resumed = load_checkpoint(checkpoint_dir, key) if checkpoint_dir else None
    if not resumed:
        return 0, []
    tensors, state = resumed
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, strict=False)
    restore_optimizer(opt, names, tensors)
    return state["step"], state["curve"]


def _apply(event: Removal, wrapped: dict[str, FakeNorm], guard: DivergenceGuard) -> None:
    """Freeze one norm use, or release one special position in every norm."""
    if event.phase == "special":
        for norm in wrapped.values():
            norm.release(event.position, event.weight)
        return
    scales = wrapped[event.norm].freeze(event.use)  # (1 + n_special,)
    guard.statistics(event.step, {f"{event.norm} ({event.use})'s frozen scale": scales})


def _schedule_row(event: Removal, wrapped: dict[str, FakeNorm]) -> dict:
    row = event.to_row()
    if event.phase != "special":
        norm = wrapped[event.norm]
        u = norm.uses.index(event.use)
        row["frozen_scale"] = float(norm.frozen_scale[u])
        row["frozen_scale_position0"] = float(norm.frozen_special[u, 0]) if norm.special.numel() else float("nan")
    return row


def _guard(s, freeze: bool, checkpoint_dir: Path | None) -> DivergenceGuard:
    fix = (f"lower weights.lnfree.lr (now {s.lr}), raise the gaps (weights.lnfree.gap_mlp/gap_qk/gap_v, now "
           f"{s.gap_mlp}/{s.gap_qk}/{s.gap_v}), lower weights.lnfree.norms_per_step (now {s.norms_per_step}) or "
           f"raise weights.lnfree.warmup_steps (now {s.warmup_steps})")
    return DivergenceGuard("LayerNorm removal" if freeze else "fine-tune control (LN kept)", fix,
                           checkpoint_file(checkpoint_dir) if checkpoint_dir else None)


def _step(model, wrapped: dict[str, FakeNorm], ids: torch.Tensor, mask: torch.Tensor, opt, params: list,
          guard: DivergenceGuard, step: int, s) -> dict:
    """One optimiser step on the batch ``ids``/``mask`` (B, T): next-token loss (+ the auxiliary
    loss), the guard's checks before the weights move, clipping, AdamW. Returns the curve's row, with
    ``position0_ratio``: the largest ratio over norms of position 0's live scale to the shared one."""
    device = model_device(model)
    width = int(mask.sum(1).max())
    b_ids, b_mask = ids[:, :width].to(device), mask[:, :width].to(device)  # (B, T)
    set_token_mask(wrapped, b_mask)  # scales averaged over real tokens only
    loss = token_losses(model(input_ids=b_ids, attention_mask=b_mask).logits, b_ids, b_mask).mean()
    aux = torch.stack([n.aux_term for n in wrapped.values()]).mean() if s.aux_weight > 0 and wrapped else None
    value = guard.loss(step, loss)
    opt.zero_grad()
    (loss + s.aux_weight * aux if aux is not None else loss).backward()
    grad_norm = guard.gradients(step, params, clip=s.grad_clip)  # the norm before clipping
    opt.step()
    ratios = [r for r in (n.position0_ratio() for n in wrapped.values()) if r is not None]
    return {"loss": value, "aux_loss": float(aux) if aux is not None else float("nan"), "grad_norm": grad_norm,
            "position0_ratio": float(torch.stack(ratios).max()) if ratios else float("nan")}
