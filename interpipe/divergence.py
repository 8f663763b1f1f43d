"""Stop a training loop at the first non-finite loss, gradient or frozen statistic.

Every loop that trains (the toy GPT-2, classifier fine-tuning, bigram masks, LayerNorm removal) owns a
:class:`DivergenceGuard` and calls it at the three points where a divergence first shows: the loss after
the forward, the gradients before the optimizer step (so no NaN reaches the weights), and any statistic
it freezes into the model. A failure raises :class:`TrainingDiverged` naming the loop, the step, the
value and the settings to change, and says where the last good checkpoint is kept: checkpoints are only
written after a step that passed, and a failed run never deletes its checkpoint.

>>> import torch
>>> guard = DivergenceGuard("toy training", fix="lower model.toy.lr")
>>> guard.loss(3, torch.tensor(2.5))
2.5
>>> guard.loss(4, torch.tensor(float("nan")))
Traceback (most recent call last):
...
interpipe.divergence.TrainingDiverged: toy training diverged at step 4: loss = nan. To change: lower model.toy.lr.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


class TrainingDiverged(FloatingPointError):
    """A training loop met a non-finite loss, gradient or statistic; the message names the step and the fix.
    ``step`` and ``what`` (e.g. ``"loss = nan"``) say where and what, for a result that reports it."""

    def __init__(self, message: str, step: int = -1, what: str = ""):
        super().__init__(message)
        self.step, self.what = step, what


@dataclass(frozen=True)
class DivergenceGuard:
    """The checks of one training loop.

    ``loop`` names it in messages ("LayerNorm removal"); ``fix`` lists the settings to change
    ("lower weights.lnfree.lr (now 0.001), raise weights.lnfree.gap"); ``checkpoint``, the file where
    the loop keeps its resumable checkpoint, if it has one.
    """

    loop: str
    fix: str
    checkpoint: Path | None = None

    def loss(self, step: int, loss: torch.Tensor) -> float:
        """The loss as a float, or :class:`TrainingDiverged` if it is not finite."""
        value = float(loss.detach().float())
        if not math.isfinite(value):
            self._fail(step, f"loss = {value}")
        return value

    def gradients(self, step: int, params: Iterable[torch.Tensor], clip: float = 0.0) -> float:
        """The total L2 norm of the parameters' gradients; :class:`TrainingDiverged` if any is not finite.
        With ``clip > 0`` the gradients are then clipped to that norm with the same total
        (``clip_grad_norm_`` without computing it a second time).

        Call after ``backward()`` and before ``optimizer.step()``, so the weights stay the last good ones.
        """
        params = [p for p in params if p.grad is not None]
        grads = [p.grad for p in params]
        if not grads:
            return 0.0
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        norm = float(total.float())
        if not math.isfinite(norm):
            worst = next(i for i, g in enumerate(grads) if not bool(torch.isfinite(g).all()))
            self._fail(step, f"gradient norm = {norm} (first non-finite gradient: parameter #{worst}, "
                             f"shape {tuple(grads[worst].shape)})")
        if clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, clip, total)
        return norm

    def statistics(self, step: int, values: Mapping[str, float | torch.Tensor]) -> None:
        """:class:`TrainingDiverged` if any named statistic (e.g. a frozen norm scale) is not finite."""
        bad = {}
        for name, value in values.items():
            flat = torch.as_tensor(value).detach().float().flatten()
            if not bool(torch.isfinite(flat).all()):
                bad[name] = float(flat[~torch.isfinite(flat)][0])
        if bad:
            shown = ", ".join(f"{name} = {value}" for name, value in list(bad.items())[:4])
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            self._fail(step, f"non-finite statistic {shown}{more}")

    def _fail(self, step: int, what: str) -> None:
        message = f"{self.loop} diverged at step {step}: {what}. To change: {self.fix}."
        kept = self._checkpoint_note()
        raise TrainingDiverged(message + (f" {kept}" if kept else ""), step=step, what=what)

    def _checkpoint_note(self) -> str:
        if self.checkpoint is None:
            return ""
        if not self.checkpoint.exists():
            return "No checkpoint had been written yet."
        return (f"The last good checkpoint, written before this step, is kept in {self.checkpoint} (a run with "
                "other settings does not resume it).")


__all__ = ["DivergenceGuard", "TrainingDiverged"]
