"""The removal schedule as data: which norm (or special position) is frozen at which step.

The official order (Baroni et al. 2025, ``config.py`` of submarat/removing-layer-norm), GPT-2 small:

====================  ======================  ====================
phase                 what is frozen          steps (12 layers)
====================  ======================  ====================
``mlp``               each block's MLP norm   20, 22, ..., 42
``qk``                attention norm, q/k     44, 46, ..., 66
``v``                 attention norm, v       68, 71, ..., 101
``final``             the final norm          104
``special``           position 0's own scale  116
====================  ======================  ====================

Each phase begins one of its predecessor's gaps after that predecessor's last event; the special
positions follow the final norm ``gap_special`` steps apart (outliers first, position 0 last), each
released over ``release_steps`` steps (its own scale's weight falling ``1 - i / release_steps``; 1 =
at once, as the official code); then ``extra_steps`` recovery steps. ``norms_per_step`` norms of one phase share an event (deep models).
Without ``split_qkv`` the attention norm is frozen in one phase, ``attn`` (gap ``gap_qk``).

>>> from types import SimpleNamespace as S
>>> s = S(start_step=20, gap_mlp=2, gap_qk=2, gap_v=3, gap_special=12, norms_per_step=1, split_qkv=True)
>>> norms = S(mlp=[f"h.{i}.ln_2" for i in range(12)], attn=[f"h.{i}.ln_1" for i in range(12)], final="ln_f")
>>> events = removal_schedule(norms, s, special=(0,))
>>> [(e.step, e.phase) for e in events if e.phase in ("final", "special")]
[(104, 'final'), (116, 'special')]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Removal:
    """One freezing event: at ``step`` (before its batch) ``use`` of ``norm`` is frozen, or, in the
    ``special`` phase, ``position`` keeps ``weight`` of its own scale in every norm (0: none; ``norm``
    is then empty)."""

    step: int
    phase: str  # mlp | qk | v | attn | final | special
    norm: str = ""
    use: str = "all"  # all | qk | v
    position: int = -1
    weight: float = 0.0  # special phase: the share of its own scale the position keeps after this step

    def to_row(self) -> dict:
        row = asdict(self)
        row["target"] = self.norm if self.phase != "special" else f"position {self.position}"
        return row


def phases(norms, split_qkv: bool) -> list[tuple[str, list[str], str]]:
    """``(phase, norm paths, use)`` in removal order; ``norms`` has ``mlp``, ``attn`` (lists) and ``final``."""
    attention = [("qk", norms.attn, "qk"), ("v", norms.attn, "v")] if split_qkv else [("attn", norms.attn, "all")]
    return [("mlp", norms.mlp, "all"), *attention, ("final", [norms.final], "all")]


def removal_schedule(norms, s, special: tuple[int, ...] = (0,)) -> list[Removal]:
    """Every event of the recipe in step order (settings ``s``: ``start_step``, ``gap_*``,
    ``norms_per_step``, ``split_qkv``, ``release_steps``, 1 when absent); ``special``: the positions
    with their own scale."""
    gaps = {"mlp": s.gap_mlp, "qk": s.gap_qk, "attn": s.gap_qk, "v": s.gap_v}
    events, step = [], s.start_step
    for phase, paths, use in phases(norms, s.split_qkv):
        groups = [paths[i:i + s.norms_per_step] for i in range(0, len(paths), s.norms_per_step)]
        for k, group in enumerate(groups):
            events += [Removal(step, phase, name, use) for name in group]
            if k < len(groups) - 1 or phase != "final":
                step += gaps.get(phase, 0)
    release = getattr(s, "release_steps", 1)
    for position in sorted(special, key=lambda p: (p == 0, p)):  # outliers first, position 0 last
        step += s.gap_special
        events += [Removal(step + i, "special", position=position, weight=1 - (i + 1) / release) for i in range(release)]
        step += release - 1
    return events


def total_steps(events: list[Removal], extra_steps: int) -> int:
    """Steps of the whole run: the last event's step, its own step, then the recovery steps."""
    return max((e.step for e in events), default=-1) + 1 + extra_steps


def events_at(events: list[Removal]) -> dict[int, list[Removal]]:
    """The events grouped by step."""
    out: dict[int, list[Removal]] = {}
    for event in events:
        out.setdefault(event.step, []).append(event)
    return out
