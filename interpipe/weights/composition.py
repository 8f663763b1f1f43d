"""Rank-1 components of attention heads and composition scores between them.

Merullo, Eickhoff & Pavlick, *Talking Heads: Understanding Inter-layer Communication in
Transformer Language Models* (NeurIPS 2024, arXiv 2406.09519). Every head's OV circuit
``W_V W_O`` and QK circuit ``W_Q W_K^T`` (``d_model x d_model``, rank ``d_head``; LN folded, see
:mod:`interpipe.weights.common`) is split by SVD into rank-1 components ``s_i u_i v_i^T``. The
composition score of Elhage et al. (2021),

    C(A, B) = ||A B||_F / (||A||_F ||B||_F),

between a sender's OV component ``s u v^T`` and a receiver matrix says how much of what the sender
writes (direction ``v``) the receiver reads:

- Q-composition: ``C(OV_i, QK)`` — the sender feeds the receiver's queries;
- K-composition: ``C(OV_i, QK^T)`` — the sender feeds the receiver's keys;
- V-composition: ``C(OV_i, OV_r)`` — the sender feeds the receiver's values.

For two rank-1 components the score reduces to ``|v . a|`` (``a`` the receiver component's reading
direction), which is how every component pair is scored at once. SVDs are taken in factored form
(QR of both factors, SVD of the small ``d_head x d_head`` core), as TransformerLens's
``FactoredMatrix`` does, so ``d_model x d_model`` matrices are never formed.

Heads are query heads: under grouped-query attention the weights arrive with ``W_K``/``W_V``
expanded to their query heads (:func:`interpipe.weights.common.folded_head_weights`), so every
score has ``n_heads`` entries per layer. With rotary positions the QK matrices leave out the
rotation: Q/K-composition is the composition at relative offset 0 (position-free); V-composition
does not involve positions.

Heads are :class:`~interpipe.components.Component` values; the tables write them as ``L3H1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interpipe.components import Component
from interpipe.typing import Float, Tensor
from interpipe.weights.common import HeadWeights

MODES = ("Q", "K", "V")


def factored_svd(A: Float[Tensor, "... d_in r"], B: Float[Tensor, "... r d_out"], k: int | None = None):
    """SVD of ``A @ B`` without forming it: returns ``U (..., d_in, k)``, ``S (..., k)``,
    ``V (..., d_out, k)`` with ``A @ B = U diag(S) V^T`` (top ``k`` components, descending).

    >>> A, B = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    >>> U, S, V = factored_svd(A, B)
    >>> torch.allclose(U @ torch.diag(S) @ V.T, A @ B)
    True
    """
    Qa, Ra = torch.linalg.qr(A)  # (..., d_in, r), (..., r, r)
    Qb, Rb = torch.linalg.qr(B.transpose(-2, -1))  # (..., d_out, r), (..., r, r)
    Um, S, Vmh = torch.linalg.svd(Ra @ Rb.transpose(-2, -1))  # core (..., r, r)
    U, V = Qa @ Um, Qb @ Vmh.transpose(-2, -1)  # (..., d_in, r), (..., d_out, r)
    k = S.shape[-1] if k is None else min(k, S.shape[-1])
    return U[..., :k], S[..., :k], V[..., :k]


def factored_norm(A: Float[Tensor, "... d_in r"], B: Float[Tensor, "... r d_out"]) -> Float[Tensor, "..."]:
    """Frobenius norm of ``A @ B`` from its factors."""
    _, Ra = torch.linalg.qr(A)
    _, Rb = torch.linalg.qr(B.transpose(-2, -1))
    return torch.linalg.matrix_norm(Ra @ Rb.transpose(-2, -1))  # ||Qa Ra Rb^T Qb^T|| = ||Ra Rb^T||


def matrix_composition(A1, B1, A2, B2) -> Tensor:
    """``||A1 B1 A2 B2||_F / (||A1 B1||_F ||A2 B2||_F)`` for factored matrices (broadcast leading dims)."""
    core = B1 @ A2  # (..., r1, r2)
    return factored_norm(A1, core @ B2) / (factored_norm(A1, B1) * factored_norm(A2, B2))


@dataclass
class HeadComponents:
    """Top-``k`` rank-1 SVD components of every head's OV and QK circuits.

    ``ov_in``/``ov_out``: OV's reading (``u``) and writing (``v``) directions; ``qk_q``/``qk_k``: QK's
    query-side and key-side directions. Directions (layer, head, comp, d_model) are unit vectors;
    singular values (layer, head, comp); ``*_norm`` (layer, head) are the full matrices' norms.
    """

    ov_in: Float[Tensor, "layer head comp d_model"]
    ov_s: Float[Tensor, "layer head comp"]
    ov_out: Float[Tensor, "layer head comp d_model"]
    qk_q: Float[Tensor, "layer head comp d_model"]
    qk_s: Float[Tensor, "layer head comp"]
    qk_k: Float[Tensor, "layer head comp d_model"]
    ov_norm: Float[Tensor, "layer head"]
    qk_norm: Float[Tensor, "layer head"]

    def reading(self, mode: str) -> Float[Tensor, "layer head comp d_model"]:
        """The receiver-side directions that mode ``Q``/``K``/``V`` composes with."""
        if mode not in MODES:
            raise ValueError(f"composition mode {mode!r} is not one of {MODES}")
        return {"Q": self.qk_q, "K": self.qk_k, "V": self.ov_in}[mode]


def head_components(w: HeadWeights, k: int) -> HeadComponents:
    """SVD components of every head (``k`` per head, largest first)."""
    if k < 1:
        raise ValueError(f"need at least one component per head (got k={k})")
    ov_u, ov_s, ov_v = factored_svd(w.W_V, w.W_O, k)  # (L, H, d, k), (L, H, k), (L, H, d, k)
    qk_u, qk_s, qk_v = factored_svd(w.W_Q, w.W_K.transpose(-2, -1), k)
    t = lambda x: x.transpose(-2, -1).contiguous()  # (L, H, d, k) -> (L, H, k, d)  # noqa: E731
    return HeadComponents(t(ov_u), ov_s, t(ov_v), t(qk_u), qk_s, t(qk_v),
                          factored_norm(w.W_V, w.W_O), factored_norm(w.W_Q, w.W_K.transpose(-2, -1)))


def component_composition(components: HeadComponents, mode: str) -> Float[Tensor, "layer head comp layer_r head_r comp_r"]:
    """Composition score of every sender OV component with every receiver component (``|v . a|``).

    Entries where the receiver's layer is not after the sender's are set to 0.
    """
    # (L_send, H_send, comp, d_model) . (L_recv, H_recv, comp_r, d_model) -> (L_send, H_send, comp, L_recv, H_recv, comp_r)
    scores = torch.einsum("lhcd,mged->lhcmge", components.ov_out, components.reading(mode)).abs()
    n_layers = scores.shape[0]
    later = torch.arange(n_layers)[:, None] < torch.arange(n_layers)[None, :]  # (L_send, L_recv)
    return scores * later[:, None, None, :, None, None]


def _receiver_factors(w: HeadWeights, mode: str):
    """The factors ``(A, B)`` of the receiver matrix mode ``mode`` reads through (``v^T A B``)."""
    if mode == "Q":  # v^T W_Q W_K^T
        return w.W_Q, w.W_K.transpose(-2, -1)
    if mode == "K":  # v^T W_K W_Q^T
        return w.W_K, w.W_Q.transpose(-2, -1)
    if mode == "V":
        return w.W_V, w.W_O
    raise ValueError(f"composition mode {mode!r} is not one of {MODES}")


def component_matrix_composition(w: HeadWeights, components: HeadComponents, mode: str) -> Float[Tensor, "layer head comp layer_r head_r"]:
    """Composition score of every sender OV component with every receiver's whole matrix.

    Memory grows as ``(layer head)^2 comp d_model``: for one receiver use :func:`receiver_composition`.
    """
    A, B = _receiver_factors(w, mode)
    va = torch.einsum("lhcd,mgdr->lhcmgr", components.ov_out, A)  # (Ls, Hs, C, Lr, Hr, r)
    num = torch.linalg.vector_norm(torch.einsum("lhcmgr,mgre->lhcmge", va, B), dim=-1)  # (Ls, Hs, C, Lr, Hr)
    scores = num / factored_norm(A, B)[None, None, None]
    later = torch.arange(w.n_layers)[:, None] < torch.arange(w.n_layers)[None, :]
    return scores * later[:, None, None, :, None]


def receiver_composition(w: HeadWeights, components: HeadComponents, mode: str,
                         receiver: Component) -> Float[Tensor, "layer head comp"]:
    """:func:`component_matrix_composition` for one receiver head only."""
    A, B = _receiver_factors(w, mode)
    A, B = A[receiver.layer, receiver.index], B[receiver.layer, receiver.index]  # (d_model, r), (r, d_out)
    num = torch.linalg.vector_norm(components.ov_out @ A @ B, dim=-1)  # (Ls, Hs, C)
    scores = num / factored_norm(A, B)
    return scores * (torch.arange(w.n_layers) < receiver.layer)[:, None, None]


def q_composition(w: HeadWeights, components: HeadComponents) -> Tensor:
    """Sender OV components against receivers' whole QK circuits, read through the query side."""
    return component_matrix_composition(w, components, "Q")


def k_composition(w: HeadWeights, components: HeadComponents) -> Tensor:
    """Sender OV components against receivers' whole QK circuits, read through the key side."""
    return component_matrix_composition(w, components, "K")


def v_composition(w: HeadWeights, components: HeadComponents) -> Tensor:
    """Sender OV components against receivers' whole OV circuits (value side)."""
    return component_matrix_composition(w, components, "V")


def random_baseline(d_model: int) -> float:
    """Expected ``|cos|`` of two random unit vectors in ``d_model`` dims (rank-1 pair baseline)."""
    return math.sqrt(2.0 / (math.pi * d_model))


def top_channels(components: HeadComponents, n: int) -> "object":
    """The ``n`` strongest sender-component -> receiver-component channels over all modes (DataFrame)."""
    import pandas as pd

    rows = []
    for mode in MODES:
        scores = component_composition(components, mode)
        flat = scores.flatten()
        values, idx = flat.topk(min(n, flat.numel()))
        for value, index in zip(values.tolist(), idx.tolist()):
            ls, hs, cs, lr, hr, cr = torch.unravel_index(torch.tensor(index), scores.shape)
            recv_s = components.qk_s if mode in ("Q", "K") else components.ov_s
            sender, receiver = Component.head(int(ls), int(hs)), Component.head(int(lr), int(hr))
            rows.append({"mode": mode, "score": value, "sender": sender.name, "sender_comp": int(cs),
                         "receiver": receiver.name, "receiver_comp": int(cr),
                         "sender_sv": float(components.ov_s[ls, hs, cs]), "receiver_sv": float(recv_s[lr, hr, cr])})
    frame = pd.DataFrame(rows).sort_values("score", ascending=False).head(n).reset_index(drop=True)
    frame["ratio_to_random"] = frame["score"] / random_baseline(components.ov_out.shape[-1])
    return frame


def head_pair_frame(components: HeadComponents) -> "object":
    """Per (sender head, receiver head, mode): the largest component-pair score (long DataFrame)."""
    import pandas as pd

    rows = []
    for mode in MODES:
        best = component_composition(components, mode).amax(dim=(2, 5))  # (Ls, Hs, Lr, Hr)
        L, H = best.shape[:2]
        for ls in range(L):
            for hs in range(H):
                for lr in range(ls + 1, L):
                    for hr in range(H):
                        rows.append({"mode": mode, "sender": Component.head(ls, hs).name,
                                     "receiver": Component.head(lr, hr).name,
                                     "max_component_score": float(best[ls, hs, lr, hr])})
    return pd.DataFrame(rows)
