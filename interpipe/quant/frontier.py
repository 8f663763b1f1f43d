"""The survival frontier: per method, the fewest bits at which a causal LM still solves a task.

*Solves* is the quant_interp study's rule (:mod:`interpipe.quant_interp.verdict`) applied to the quantize
stage's own held-out prompts: the 95 % interval of the pairwise accuracy (``pairwise_acc/<task>``, the
share of prompts whose answer logit beats the foil's; its interval over calibration seeds and prompts,
:mod:`~interpipe.quant.resample`) lies above ``chance``. Chance is 0.5 for every task, IOI and Laundry
List alike: pairwise accuracy is a choice between the answer and one foil, whatever the number of
candidates the prompt lists.

The bits settings of the grid fall into series that are ordered separately (:func:`series`): weights
and activations both quantized (``w8a8 > w6a6 > w4a8 > w4a4``, by weight bits, then activation bits),
activation-only (``w16a8 > w16a6``: 16 bits is full precision) and weight-only (``w8a16 > w4a16``).
Within a series the frontier is the last setting, from the most bits down, before the first one that
does not solve the task, so every setting above the frontier solves it too; a setting further down that
solves it again is named in the ``note``. ``frontier.csv`` holds one row per model x method x series x
task: the frontier's setting, its effective bits (:func:`effective_bits`: the narrower quantized side)
and pairwise accuracy with interval, and the same for the setting one step below.

>>> [series(t) for t in ("w8a8", "w16a6", "w4a16")]
['weights+activations', 'activations', 'weights']
>>> ordered(["w4a4", "w8a8", "w4a8", "w6a6"])
['w8a8', 'w6a6', 'w4a8', 'w4a4']
"""

from __future__ import annotations

import math

import pandas as pd

from interpipe.quant.resample import FP_PAIRWISE, PAIRWISE
from interpipe.settings.quantize import MAX_BITS, parse_bits

TASKS = ("ioi", "laundry_list")  # the tasks whose frontier the stage writes (where the prepared data has them)
CHANCE = 0.5  # answer against one foil
SERIES = ("weights+activations", "activations", "weights")
NAN = float("nan")


def series(tag: str) -> str:
    """Which sides a bits setting quantizes (16 bits: not quantized)."""
    w, a = parse_bits(tag)
    if w >= MAX_BITS and a >= MAX_BITS:
        return "none"
    return "activations" if w >= MAX_BITS else "weights" if a >= MAX_BITS else "weights+activations"


def ordered(tags) -> list[str]:
    """Bits settings from the most bits down: by weight bits, then activation bits."""
    return sorted(tags, key=lambda t: parse_bits(t), reverse=True)


def effective_bits(tag: str) -> int:
    """The frontier as a number: the bits of the narrower quantized side (``w6a6`` 6, ``w16a8`` 8, ``w4a8`` 4)."""
    return min(parse_bits(tag))


def _accuracy(metrics: dict, key: str) -> tuple[float, float, float]:
    return tuple(float(metrics.get(f"{key}{s}", NAN)) for s in ("", "_ci_low", "_ci_high"))


def _solves(low: float, chance: float) -> bool:
    return not math.isnan(low) and low > chance


def frontier_rows(model: str, settings: list, tasks=TASKS, chance: float = CHANCE) -> pd.DataFrame:
    """One row per method x series x task of ``settings`` (:class:`~interpipe.quant.results.SettingResult`)."""
    by_method: dict[str, dict[str, dict]] = {}
    for s in settings:
        by_method.setdefault(s.method, {})[s.bits] = s.metrics
    rows = []
    for method, runs in by_method.items():
        for name in SERIES:
            tags = ordered(t for t in runs if series(t) == name)
            for task in tasks:
                key = f"{PAIRWISE}/{task}"
                if not tags or not any(key in runs[t] for t in tags):
                    continue
                rows.append(_row(model, method, name, task, tags, runs, chance))
    return pd.DataFrame(rows)


def _row(model: str, method: str, name: str, task: str, tags: list[str], runs: dict, chance: float) -> dict:
    key = f"{PAIRWISE}/{task}"
    acc = {t: _accuracy(runs[t], key) for t in tags}
    solved = [_solves(acc[t][1], chance) for t in tags]
    first_fail = solved.index(False) if False in solved else len(tags)
    frontier = tags[first_fail - 1] if first_fail > 0 else None
    below = tags[first_fail] if first_fail < len(tags) else None
    fp = _accuracy(runs[tags[0]], f"{FP_PAIRWISE}/{task}")
    notes = []
    if not _solves(fp[1], chance):
        notes.append(f"the FP model does not solve {task} (pairwise accuracy interval not above {chance:g})")
    if frontier is None:
        notes.append(f"solved at no setting of the series (most bits: {tags[0]})")
    again = [t for t, ok in zip(tags[first_fail:], solved[first_fail:]) if ok]
    if again:
        notes.append(f"solved again below the frontier at {', '.join(again)}")
    row = {"model": model, "method": method, "series": name, "task": task, "chance": chance,
           "frontier_bits": frontier or "", "effective_bits": effective_bits(frontier) if frontier else NAN,
           "below_bits": below or ""}
    for prefix, tag in (("", frontier), ("below_", below)):
        value, low, high = acc[tag] if tag else (NAN, NAN, NAN)
        row.update({f"{prefix}pairwise_acc": value, f"{prefix}pairwise_acc_ci_low": low,
                    f"{prefix}pairwise_acc_ci_high": high,
                    f"{prefix}n_seeds": runs[tag]["n_seeds"] if tag else NAN})
    row.update({"fp_pairwise_acc": fp[0], "fp_pairwise_acc_ci_low": fp[1], "fp_pairwise_acc_ci_high": fp[2],
                "settings": " ".join(tags), "note": "; ".join(notes)})
    return row


def headline_rows(frontier: pd.DataFrame, origin: str) -> list[dict]:
    """One ``headline.csv`` row per method x series x task: ``metric=frontier_bits``, the value the frontier's
    effective bits (NaN where no setting solves the task), the setting's name in ``bits`` and ``note``."""
    rows = []
    suffix = {"weights+activations": "", "activations": "-a", "weights": "-w"}
    for r in frontier.itertuples(index=False):
        where = (f"{r.frontier_bits}: pairwise accuracy interval above {r.chance:g}" if r.frontier_bits else "none")
        below = f"; one step below: {r.below_bits}" if r.below_bits else "; no setting below it in the grid"
        rows.append({"model": r.model, "task": r.task, "method": f"{r.method}-frontier{suffix[r.series]}",
                     "weights_origin": origin, "quant_method": r.method, "bits": r.frontier_bits or "none",
                     "protocol": r.series, "metric": "frontier_bits", "value": r.effective_bits, "ci_low": None,
                     "ci_high": None, "n_seeds": r.n_seeds, "baseline": "fp", "baseline_value": float(MAX_BITS),
                     "note": f"{where}{below}" + (f"; {r.note}" if r.note else "")})
    return rows


__all__ = ["CHANCE", "SERIES", "TASKS", "effective_bits", "frontier_rows", "headline_rows", "ordered", "series"]
