"""Range observers: the ``[min, max]`` a static quantizer is calibrated to.

Two observers, per tensor or per channel (the last axis), as in the Outlier Suppression+ code
(Wei et al. 2023, ModelTC/Outlier_Suppression_Plus, ``MinMaxObserver`` / ``AvgMinMaxObserver``):

- ``minmax``: the global minimum and maximum over every calibration token;
- ``avg_minmax``: the minimum and maximum of each calibration unit, averaged over the units. The
  official code's unit is a calibration batch; here it is one calibration *example* (its
  non-padding tokens), so the range does not depend on how the texts were batched.

Averaging clips the rare extreme tokens that one global min/max would stretch the grid for.

>>> import torch
>>> obs = Observer("avg_minmax")
>>> obs.update(torch.tensor([-1.0, -3.0]), torch.tensor([2.0, 4.0]))  # two examples' ranges
>>> [float(v) for v in obs.range()]
[-2.0, 3.0]
"""

from __future__ import annotations

import torch

from interpipe.settings.quantize import OBSERVERS
from interpipe.typing import Tensor


def example_ranges(x: Tensor, mask: Tensor | None, per_channel: bool = False) -> tuple[Tensor, Tensor]:
    """Per-example minimum and maximum over non-padding tokens.

    ``x`` is ``[batch, pos, d]`` with ``mask`` ``[batch, pos]`` (or a pooled ``[batch, d]``: one row per
    example). Returns ``(batch,)`` tensors, or ``(batch, d)`` with ``per_channel``.
    """
    if x.ndim == 2 or mask is None or x.shape[:2] != mask.shape:
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, rows, d): every row counts
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    keep = mask.to(x.device)[..., None]  # (batch, pos, 1)
    lo = x.masked_fill(~keep, float("inf")).amin(dim=1)  # (batch, d)
    hi = x.masked_fill(~keep, float("-inf")).amax(dim=1)  # (batch, d)
    if not per_channel:
        lo, hi = lo.amin(dim=-1), hi.amax(dim=-1)  # (batch,)
    return lo, hi


class Observer:
    """Running range of one tensor; ``update`` takes the ranges of one or more calibration units."""

    def __init__(self, kind: str = "avg_minmax"):
        if kind not in OBSERVERS:
            raise ValueError(f"quantize.observer={kind!r} is not one of {OBSERVERS}")
        self.kind = kind
        self.count = 0
        self.lo: Tensor | None = None  # running min, or the sum of unit minima (avg_minmax)
        self.hi: Tensor | None = None

    def update(self, unit_min: Tensor, unit_max: Tensor) -> None:
        """Add units: ``(n_units,)`` per tensor or ``(n_units, d)`` per channel."""
        unit_min, unit_max = unit_min.detach().double(), unit_max.detach().double()
        if self.kind == "minmax":
            lo, hi = unit_min.amin(dim=0), unit_max.amax(dim=0)
            self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        else:
            lo, hi = unit_min.sum(dim=0), unit_max.sum(dim=0)
            self.lo = lo if self.lo is None else self.lo + lo
            self.hi = hi if self.hi is None else self.hi + hi
        self.count += unit_min.shape[0]

    def observe(self, x: Tensor, mask: Tensor | None, per_channel: bool = False) -> None:
        """Add every example of a batch ``x`` (``[batch, pos, d]``) as one unit."""
        self.update(*example_ranges(x, mask, per_channel))

    def range(self) -> tuple[Tensor, Tensor]:
        """``(min, max)`` as float32 tensors (scalars per tensor, ``(d,)`` per channel)."""
        if self.count == 0:
            raise RuntimeError("the observer saw no calibration data; run calibration first")
        if self.kind == "minmax":
            return self.lo.float(), self.hi.float()
        return (self.lo / self.count).float(), (self.hi / self.count).float()


def static_range(ex_min: Tensor, ex_max: Tensor, kind: str, per_channel: bool = False, shift: Tensor | None = None,
                 scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The observed range of an input from its examples' per-channel ranges ``(n_examples, d)``.

    With a migration the input's channels become ``(x - shift) / scale`` (``scale > 0`` keeps each
    channel's order), so the migrated range follows from the unmigrated calibration pass:
    exact at full precision, where migration leaves every other input unchanged. The arithmetic is
    float64 on the ranges' device (the calibration statistics'), wherever ``shift`` and ``scale`` live.
    """
    lo, hi = ex_min.double(), ex_max.double()  # (n_examples, d)
    if scale is not None:
        s = scale.to(lo)  # (d,)
        z = torch.zeros_like(s) if shift is None else shift.to(lo)  # (d,)
        lo, hi = (lo - z) / s, (hi - z) / s
    if not per_channel:
        lo, hi = lo.amin(dim=-1), hi.amax(dim=-1)  # (n_examples,)
    obs = Observer(kind)
    obs.update(lo, hi)
    return obs.range()
