"""LayerNorm/RMSNorm removal by fine-tuning (Baroni et al. 2025, arXiv 2507.02559; submarat/removing-layer-norm).

Read in this order:

- :mod:`~interpipe.weights.lnfree.study` — :func:`run_lnfree`, the study's named steps;
- :mod:`~interpipe.weights.lnfree.schedule` — which norm (or special position) is frozen at which step;
- :mod:`~interpipe.weights.lnfree.recipe` — calibration, special positions, the fine-tuning loop;
- :mod:`~interpipe.weights.lnfree.fake_norm` — the fake norms, freezing, and the stock LN-free folder;
- :mod:`~interpipe.weights.lnfree.evaluate` — CE, DLA, tasks, the verdict and the headline;
- :mod:`~interpipe.weights.lnfree.patching` — attribution vs exact patching before/after.

The protocol, the schedules per tier and what each shows: ``docs/layernorm_removal.md``.
"""

from interpipe.weights.lnfree.study import LNFreeResult, run_lnfree

__all__ = ["LNFreeResult", "run_lnfree"]
