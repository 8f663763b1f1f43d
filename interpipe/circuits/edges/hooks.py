"""Where the edge graph lives on a ``TransformerBridge``: the hooks of every sender and receiver.

Senders are read at ``blocks.0.hook_resid_pre`` (the input: embeddings, positions included),
``blocks.{L}.attn.hook_z`` times each head's ``W_O`` (head outputs ``[batch, pos, head, d_model]``)
and ``blocks.{L}.hook_mlp_out``; receivers at ``blocks.{L}.attn.hook_{q,k,v}_input``
(``[batch, pos, head or kv_head, d_model]``, before the attention norm), ``blocks.{L}.hook_mlp_in``
and ``ln_final.hook_in``.

TransformerLens forks the per-head q/k/v inputs and exposes the MLP input only when
``use_split_qkv_input`` and ``use_hook_mlp_in`` are set; a hook on an unforked input is accepted
and never runs, which would turn every edge patch into a silent no-op. :func:`edge_hooks` sets
both flags for the duration of a run and :class:`Fired` wraps every hook so a run in which a
registered hook did not fire raises instead of returning unpatched numbers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from interpipe.circuits.bridge import architecture
from interpipe.circuits.edges.graph import EdgeGraph
from interpipe.circuits.paths import split_qkv_inputs
from interpipe.models.arch import UnsupportedArchitecture

INPUT_HOOK = "blocks.0.hook_resid_pre"
LOGITS_HOOK = "ln_final.hook_in"


def receiver_hook(layer: int, kind: str) -> str:
    """The hook whose activation is the input of receivers of ``kind`` in block ``layer``."""
    if kind in ("q", "k", "v"):
        return f"blocks.{layer}.attn.hook_{kind}_input"
    return f"blocks.{layer}.hook_mlp_in" if kind == "mlp" else LOGITS_HOOK


def receiver_groups(graph: EdgeGraph) -> list[tuple[str, int, str, list[int]]]:
    """``(hook, layer, kind, receiver rows)`` for every receiver hook, in forward order."""
    groups = []
    for layer in range(graph.n_layers):
        for kind in ("q", "k", "v", "mlp"):
            groups.append((receiver_hook(layer, kind), layer, kind, graph.receiver_rows(layer, kind)))
    groups.append((LOGITS_HOOK, graph.n_layers, "logits", graph.receiver_rows(graph.n_layers, "logits")))
    return groups


@contextlib.contextmanager
def edge_hooks(bridge: Any) -> Iterator[None]:
    """Fork the per-head q/k/v inputs and expose the MLP inputs, restoring the flags afterwards.

    Raises :class:`UnsupportedArchitecture` naming the ``model_type`` where the bridge cannot fork
    the q/k/v inputs of the family (the edges into queries, keys and values do not exist there).
    """
    mlp_in = bool(getattr(bridge.cfg, "use_hook_mlp_in", False))
    try:
        with split_qkv_inputs(bridge):
            bridge.set_use_hook_mlp_in(True)
            try:
                yield
            finally:
                if not mlp_in:
                    bridge.set_use_hook_mlp_in(False)
    except NotImplementedError as exc:
        raise UnsupportedArchitecture(f"edge circuits need per-head q/k/v input hooks, which TransformerBridge does "
                                      f"not provide for model_type={architecture(bridge).model_type!r}: {exc}") from exc


class Fired:
    """Wraps hook functions and checks afterwards that each one ran at least once.

    >>> fired = Fired()
    >>> hooks = [fired.wrap("a", lambda act, hook: act), fired.wrap("b", lambda act, hook: act)]
    >>> _ = hooks[0][1](1, None)
    >>> fired.check()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: hooks ['b'] were registered but never ran: ...
    """

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable) -> tuple[str, Callable]:
        self.count.setdefault(name, 0)

        def hook(act: Any, hook: Any) -> Any:
            self.count[name] += 1
            return fn(act, hook)

        return name, hook

    def check(self) -> None:
        silent = [n for n, c in self.count.items() if c == 0]
        if silent:
            raise RuntimeError(f"hooks {silent} were registered but never ran: their edges would be silently "
                               f"unpatched (are use_split_qkv_input / use_hook_mlp_in set?)")
