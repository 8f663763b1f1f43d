"""When a pair's numbers mean something: the solved rule, and why a number is undefined.

**The solved rule** (one place, used by every table and figure of the study): a pair is *solved* when
the 95 % bootstrap interval of the quantized model's *pairwise IOI accuracy* — the share of the FP
circuits run's held-out prompts on which the quantized model puts the answer's (IO) logit above the
foil's (S) — lies above ``min_pairwise_accuracy``, 0.5 by default: chance for a choice between two
names. The accuracy, not the logit difference itself, because a few prompts with large differences
can carry a mean while the model picks the wrong name on most of them.

In an **unsolved** pair the quantized model no longer does the task, so every number that divides by
its logit difference or reads its circuit is *undefined* (NaN, with the reason beside it), never 0.0
or a ratio: the FP circuit's faithfulness inside the quantized model (a ratio over a collapsed
difference), its excess over random circuits and its accuracy, the overlap with the rediscovered
circuit, the per-head effect correlation and head-class survival. What shows that the task is gone
stays defined: the pairwise accuracy, the quantized clean logit difference and the share of the FP
one it retains (the FP model solves the task, so that ratio's denominator holds).

Overlap (Jaccard, containment, shared heads) is also undefined in a solved pair where there is no
circuit to compare: the quantized circuits run found the task unsolved by its own test (no circuit),
or selected the whole model (which contains every circuit: containment 1 by construction). Head-class survival is reported per
FP class only where the class has at least ``min_class_heads`` heads: below that a share moves in steps
of a quarter or more and its bootstrap interval rests on a handful of values.

>>> import numpy as np
>>> solves(pairwise_accuracy(np.array([2.0, 1.5, 0.7, 3.1, 0.2, 1.1, 0.9, 2.4]), 200), 0.5)
True
>>> solves(pairwise_accuracy(np.array([-0.3, 0.4, -1.2, 0.1, -0.5, -0.2]), 200), 0.5)
False
"""

from __future__ import annotations

# the one pairwise-accuracy rule (circuits study's too), read here on the quantized model
from interpipe.circuits.metrics import pairwise_accuracy as pairwise_accuracy
from interpipe.stats import Interval

SOLVED, UNSOLVED = "solved", "unsolved"
NAN = float("nan")


def solves(accuracy: Interval, min_pairwise_accuracy: float) -> bool:
    """The solved rule: the accuracy's interval lies above ``min_pairwise_accuracy`` (chance: 0.5)."""
    return bool(accuracy.n > 0 and accuracy.low > min_pairwise_accuracy)


def unsolved_reason(accuracy: Interval, min_pairwise_accuracy: float) -> str:
    """Why an unsolved pair's mechanism numbers are undefined, with the measured accuracy."""
    return (f"unsolved: the quantized model's pairwise IOI accuracy {accuracy} does not lie above "
            f"{min_pairwise_accuracy:g} (chance), so no FP mechanism is there to measure")


def no_circuit_reason(circuit_size: int, pool_size: float, solved_own_test: bool) -> str:
    """Why overlap is undefined in a solved pair ("" when it is defined): the quantized circuits run's
    circuit (``circuit_size`` components of its ``pool_size``) is missing or the whole model."""
    if not solved_own_test or circuit_size == 0:
        return "no circuit: the quantized model's circuits run found the task unsolved by its own test"
    if pool_size and circuit_size >= pool_size:
        return (f"no circuit: the quantized model's circuits run selected the whole model "
                f"({circuit_size} of {pool_size:g} components)")
    return ""


def small_class_reason(n_heads: int, min_class_heads: int) -> str:
    """Why a head class gets no survival interval ("" when it has enough heads)."""
    if n_heads >= min_class_heads:
        return ""
    return f"too few heads: {n_heads} in the FP class, an interval needs {min_class_heads}"


def undefined_interval(n: int = 0) -> Interval:
    """The value of an undefined number: NaN estimate and bounds."""
    return Interval(NAN, NAN, NAN, n)
