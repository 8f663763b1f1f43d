"""The edge graph of a loaded model: who sends into whom, from the one architecture description.

A *sender* writes into the residual stream: the embeddings (``input``: everything the first block
reads, token and position embeddings together), each attention head's output (``z_h @ W_O[h]``,
before the output bias) and each MLP's output. A *receiver* reads the residual stream: each query
head's query input, each key/value head's key and value inputs (before the attention norm), each
MLP's input (before its norm) and the logits (the final norm's input). An *edge* ``u → v`` is one
sender's contribution to one receiver's input; it exists when ``u`` lies before ``v``:

* attention receivers of block ``L`` read the input and every head and MLP of blocks ``< L``;
* the MLP of block ``L`` reads those and block ``L``'s heads (``pre_ln``); in ``parallel`` blocks
  (GPT-NeoX) it reads the same stream as block ``L``'s attention, so not its heads;
* the logits read every sender.

Grouped-query attention: one key/value head serves a group of ``n_heads / n_kv_heads`` query
heads, and its key and value inputs are computed once for the group. An edge into a key or value
therefore ends at a *KV head* (``L1KV0.k``): the group's query heads share it. A model with 9 query
and 3 KV heads per layer has 9 + 3 + 3 = 15 attention receivers per layer, not 27.

Names: senders ``input``, ``L2H3``, ``L2.mlp``; receivers ``L2H3.q``, ``L2KV1.k``, ``L2KV1.v``,
``L2.mlp``, ``logits`` (``L2H3.k`` where every head has its own keys); an edge ``L0H1->L2H3.q``.

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> from interpipe.models.arch import describe_architecture
>>> g = EdgeGraph.from_spec(describe_architecture(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=8))))
>>> g.n_senders, g.n_receivers, g.n_edges
(7, 15, 46)
>>> g.edge_name(g.receiver_index("L1H0.q"), g.sender_index("L0H1"))
'L0H1->L1H0.q'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from interpipe.models.arch import ArchSpec
from interpipe.typing import Tensor

INPUT, LOGITS = "input", "logits"
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Sender:
    name: str  # input | L2H3 | L2.mlp
    kind: str  # input | head | mlp
    layer: int  # -1 for the input
    index: int  # head index; -1 otherwise


@dataclass(frozen=True)
class Receiver:
    name: str  # L2H3.q | L2KV1.k | L2.mlp | logits
    kind: str  # q | k | v | mlp | logits
    layer: int  # n_layers for the logits
    index: int  # query head (q), KV head (k, v); -1 otherwise


@dataclass(frozen=True)
class EdgeGraph:
    """Senders, receivers and which edges exist (``allowed[receiver, sender]``)."""

    senders: tuple[Sender, ...]
    receivers: tuple[Receiver, ...]
    allowed: Tensor  # (receiver, sender) bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    block_style: str

    @classmethod
    def from_spec(cls, spec: ArchSpec) -> "EdgeGraph":
        """The graph of a causal model described by :func:`interpipe.models.arch.describe_architecture`."""
        spec.require("edge circuits", needs=("causal",), refuses=("post_ln",))
        senders = [Sender(INPUT, "input", -1, -1)]
        receivers: list[Receiver] = []
        for layer in range(spec.n_layers):
            receivers += [Receiver(f"L{layer}H{h}.q", "q", layer, h) for h in range(spec.n_heads)]
            kv = "KV" if spec.gqa else "H"  # a KV head serves a group of query heads; without GQA it is the head
            for kind in ("k", "v"):
                receivers += [Receiver(f"L{layer}{kv}{h}.{kind}", kind, layer, h) for h in range(spec.n_kv_heads)]
            receivers.append(Receiver(f"L{layer}.mlp", "mlp", layer, -1))
            senders += [Sender(f"L{layer}H{h}", "head", layer, h) for h in range(spec.n_heads)]
            senders.append(Sender(f"L{layer}.mlp", "mlp", layer, -1))
        receivers.append(Receiver(LOGITS, "logits", spec.n_layers, -1))
        allowed = torch.tensor([[_reads(r, s, spec.block_style) for s in senders] for r in receivers])
        return cls(tuple(senders), tuple(receivers), allowed, spec.n_layers, spec.n_heads, spec.n_kv_heads,
                   spec.block_style)

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @property
    def n_edges(self) -> int:
        return int(self.allowed.sum())

    def sender_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.senders) if s.name == name)

    def receiver_index(self, name: str) -> int:
        return next(i for i, r in enumerate(self.receivers) if r.name == name)

    def edge_name(self, receiver: int, sender: int) -> str:
        return f"{self.senders[sender].name}->{self.receivers[receiver].name}"

    def edges(self) -> Tensor:
        """Every edge as ``(receiver, sender)`` index pairs, receiver-major ``[n_edges, 2]``."""
        return self.allowed.nonzero()

    def prior_senders(self, layer: int, kind: str) -> int:
        """How many leading senders a receiver of ``kind`` in block ``layer`` can read (senders are in
        forward order, so the readable ones are a prefix)."""
        return int(self.allowed[self._first_receiver(layer, kind)].sum())

    def _first_receiver(self, layer: int, kind: str) -> int:
        return next(i for i, r in enumerate(self.receivers) if r.layer == layer and r.kind == kind)

    def receiver_rows(self, layer: int, kind: str) -> list[int]:
        """Receiver indices of ``kind`` in block ``layer`` (heads in index order)."""
        return [i for i, r in enumerate(self.receivers) if r.layer == layer and r.kind == kind]

    def sender_columns(self, layer: int, kind: str) -> list[int]:
        return [i for i, s in enumerate(self.senders) if s.layer == layer and s.kind == kind]

    def induced(self, components: Iterable[Any], mlps_always: bool = True) -> Tensor:
        """The edges between the nodes a node circuit keeps (``[receiver, sender]`` bool).

        A node circuit of heads keeps its heads and, when MLPs are never ablated (``mlps_always``),
        every MLP, the input and the logits; an edge is kept when both its ends are. A head's q/k/v
        inputs belong to it; a KV head's k/v inputs are kept when any query head of its group is.
        """
        heads = {(c.layer, c.index) for c in components if c.kind == "head"}
        mlps = {c.layer for c in components if c.kind == "mlp"}
        group = self.n_heads // self.n_kv_heads

        def keeps_sender(s: Sender) -> bool:
            return s.kind == "input" or (s.kind == "head" and (s.layer, s.index) in heads) or (
                s.kind == "mlp" and (mlps_always or s.layer in mlps))

        def keeps_receiver(r: Receiver) -> bool:
            if r.kind == "q":
                return (r.layer, r.index) in heads
            if r.kind in ("k", "v"):
                return any((r.layer, r.index * group + g) in heads for g in range(group))
            return r.kind == "logits" or mlps_always or r.layer in mlps

        rows = torch.tensor([keeps_receiver(r) for r in self.receivers])
        cols = torch.tensor([keeps_sender(s) for s in self.senders])
        return self.allowed & rows[:, None] & cols[None, :]  # (receiver, sender)


def _reads(r: Receiver, s: Sender, block_style: str) -> bool:
    """Whether receiver ``r`` reads sender ``s`` (``s`` lies before ``r`` in the forward)."""
    if s.kind == "input" or r.kind == "logits":
        return True
    if r.kind == "mlp":
        if s.layer < r.layer:
            return True
        return s.layer == r.layer and s.kind == "head" and block_style == "pre_ln"
    return s.layer < r.layer  # q / k / v of block r.layer
