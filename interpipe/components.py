"""Model components as values: an attention head, an MLP, or one MLP neuron, and their one textual form.

A :class:`Component` names a part of a transformer by layer: ``Component.head(2, 3)`` is head 3 of
layer 2, ``Component.mlp(2)`` layer 2's MLP, ``Component.neuron(2, 17)`` neuron 17 of that MLP's
hidden layer. The circuit and weight studies pass these objects from discovery to ablation to
figures; text appears only where a table, figure or JSON file is written, and reads

    L2H3      a head          L2.mlp    an MLP          L2.n17    an MLP neuron

(``str(c)`` and ``c.name``), parsed back by :meth:`Component.parse`. Components are frozen
(hashable: set and dict keys) and sort by layer, then kind (a layer's heads before its MLP before
its neurons), then index.

The weight studies' tables (``top_channels.csv``, ``head_composition.csv``, ``inhibition.csv``,
``edit_trials.csv``) and configs (``weights.talking_heads.receiver: L2H3``) use the same form. (They
once wrote ``layer.head``, ``2.3``; that form is refused with this message, because Hydra reads
``receiver=1.10`` on a command line as the number 1.1, head 1.)

>>> c = Component.parse("L2H3"); c, str(c), Component.parse(str(c)) == c
(Component(kind='head', layer=2, index=3), 'L2H3', True)
>>> sorted([Component.mlp(1), Component.head(1, 0), Component.head(0, 5)])
[Component(kind='head', layer=0, index=5), Component(kind='head', layer=1, index=0), Component(kind='mlp', layer=1, index=-1)]
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable

KINDS = ("head", "mlp", "neuron")  # also the order of a layer's components when sorted
FORMS = "L<layer>H<head> (e.g. L2H3), L<layer>.mlp (L2.mlp) or L<layer>.n<neuron> (L2.n17)"
_PATTERN = re.compile(r"^L(\d+)(?:H(\d+)|\.mlp|\.n(\d+))$")


@functools.total_ordering
@dataclass(frozen=True)
class Component:
    """A head (``L2H3``), an MLP (``L2.mlp``) or one MLP neuron (``L2.n17``).

    ``index`` is the head or neuron index within the layer (-1 for an MLP).
    """

    kind: str  # head | mlp | neuron
    layer: int
    index: int = -1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"component kind {self.kind!r} is not one of {KINDS}")
        if self.layer < 0:
            raise ValueError(f"component layer {self.layer} must be >= 0")
        if (self.kind == "mlp") != (self.index == -1) or self.index < -1:
            raise ValueError(f"a {self.kind} component needs "
                             f"{'no index' if self.kind == 'mlp' else 'an index >= 0'} (got {self.index})")

    @classmethod
    def head(cls, layer: int, head: int) -> "Component":
        """Attention head ``head`` of layer ``layer`` (a query head under grouped-query attention)."""
        return cls("head", int(layer), int(head))

    @classmethod
    def mlp(cls, layer: int) -> "Component":
        """The MLP of layer ``layer``."""
        return cls("mlp", int(layer))

    @classmethod
    def neuron(cls, layer: int, neuron: int) -> "Component":
        """Neuron ``neuron`` of the MLP hidden layer of layer ``layer``."""
        return cls("neuron", int(layer), int(neuron))

    @property
    def name(self) -> str:
        """The one textual form: ``L2H3``, ``L2.mlp`` or ``L2.n17``."""
        if self.kind == "head":
            return f"L{self.layer}H{self.index}"
        return f"L{self.layer}.mlp" if self.kind == "mlp" else f"L{self.layer}.n{self.index}"

    def __str__(self) -> str:
        return self.name

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Component):
            return NotImplemented
        return self._key() < other._key()

    def _key(self) -> tuple[int, int, int]:
        return self.layer, KINDS.index(self.kind), self.index

    @classmethod
    def parse(cls, text: str) -> "Component":
        """The component ``text`` names: ``L2H3``, ``L2.mlp`` or ``L2.n17``.

        Raises:
            ValueError: ``text`` is in none of these forms (the message lists them).
        """
        text = str(text).strip()
        match = _PATTERN.match(text)
        if not match:
            raise ValueError(f"cannot parse component {text!r}: use {FORMS}")
        layer, head, neuron = match.groups()
        if head is not None:
            return cls.head(int(layer), int(head))
        return cls.neuron(int(layer), int(neuron)) if neuron is not None else cls.mlp(int(layer))


def heads_of(components: Iterable[Component]) -> list[Component]:
    """The heads among ``components``, in their order."""
    return [c for c in components if c.kind == "head"]
