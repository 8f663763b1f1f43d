"""Rotation of the residual stream by a random Hadamard matrix, fused into the weights (QuaRot).

Ashkboos et al., *QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs* (NeurIPS 2024, arXiv
2404.00456; reference code spcl/QuaRot). In a pre-norm transformer whose norm is RMSNorm the residual
stream ``h`` can be replaced by ``h Q`` for any orthogonal ``Q`` without changing the function:

1. **Fold the norm weights** into the linears that read the norm: ``W <- W diag(gamma)``, ``gamma <- 1``
   (q/k/v for the attention norm, gate/up for the MLP norm, the unembedding for the final norm). A
   weightless RMSNorm commutes with ``Q``: ``RMS(h Q) = RMS(h)`` because ``||h Q|| = ||h||``.
2. **Rotate**: embedding rows ``E <- E Q``; every linear reading the stream ``W <- W Q`` (q, k, v, gate,
   up, unembedding); every linear writing to it ``W <- Q^T W`` and ``b <- b Q`` (attention output,
   down projection). ``Q = H diag(s) / sqrt(d)`` with ``H`` a Hadamard matrix and ``s`` random signs.
3. **Online Hadamard** before the down projection: its input ``z`` (``d_mlp``) becomes ``z H_ff`` by a
   forward pre-hook and its weight ``W_down <- W_down H_ff``, so its quantizer sees the rotated input.

A Hadamard rotation spreads every outlier channel over all channels (each rotated channel is
``sum_j +-h_j / sqrt(d)``), so the activations the quantizers see lose their outliers while the FP model is
unchanged (:func:`~interpipe.quant.study.equivalence` measures it). Hadamard matrices of size ``m 2^k``
come from a Paley construction of order ``m`` (``q + 1`` with ``q`` a prime ``= 3 mod 4``, or ``2 (q + 1)``
with ``q = 1 mod 4``) doubled ``k`` times by Sylvester's construction: SmolLM2's 576 = 36 x 16 and
1536 = 12 x 128.

Deviations from QuaRot (``docs/quantization.md``): the online Hadamard of the attention heads (before
``o_proj``) and the key/value-cache rotation are not applied; the online Hadamard is a hook that
multiplies by the matrix (no fast Walsh-Hadamard kernel).

>>> import torch
>>> h = hadamard(12)
>>> torch.equal(h @ h.T, 12 * torch.eye(12, dtype=h.dtype))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from interpipe.models.arch import ArchSpec, UnsupportedArchitecture
from interpipe.typing import Float, Tensor

NEEDS = ("causal", "pre_ln", "rmsnorm", "rotary")  # a weightless RMSNorm commutes with Q; no learned positions


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % p for p in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> Tensor:
    """``Q_ij = chi(j - i)`` with ``chi`` the quadratic character mod the prime ``q``."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)  # (q,)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q  # (q, q) j - i mod q
    return chi[idx]  # (q, q)


def _paley(m: int) -> Tensor | None:
    """A Hadamard matrix of order ``m`` from Paley's constructions, or None."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m == 2:
        return torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: I + [[0, 1^T], [-1, Q]]
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + s
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II: C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, plus) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero)  # (m, m)
    return None


def hadamard(n: int) -> Float[Tensor, "n n"]:
    """A ``n x n`` Hadamard matrix (entries +-1, ``H H^T = n I``), float64; ``ValueError`` if none is built."""
    for doublings in range(n.bit_length()):
        m = n >> doublings
        if m << doublings != n:
            break
        base = _paley(m)
        if base is not None:
            for _ in range(doublings):
                base = torch.cat([torch.cat([base, base], 1), torch.cat([base, -base], 1)], 0)  # Sylvester
            return base
    raise ValueError(f"no Hadamard matrix of order {n} from the Paley and Sylvester constructions here")


def random_hadamard(n: int, seed: int) -> Float[Tensor, "n n"]:
    """``Q = H diag(s) / sqrt(n)`` with random signs ``s`` drawn by ``seed``: orthogonal, float64."""
    signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1  # (n,)
    return hadamard(n) * signs[None, :] / n**0.5  # (n, n) column j times s_j


class OnlineHadamard:
    """Forward pre-hook: a linear's input ``z`` becomes ``z H`` (``H`` orthogonal ``(d_in, d_in)``)."""

    def __init__(self, matrix: Float[Tensor, "d_in d_in"]):
        self.matrix = matrix

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        return (x @ self.matrix.to(x), *args[1:])  # (..., d_in) rotated input


@dataclass
class Rotation:
    """A rotation fused into a model and the online Hadamard hooks it needs (module path -> matrix).

    :meth:`install` puts the hooks on whatever module sits at each path (a wrapped quantized linear
    included, so its quantizer sees the rotated input); :meth:`remove` takes them off.
    """

    seed: int
    residual: Tensor | None = None  # (d_model, d_model) Q: the stream is h Q
    writers: list[str] = field(default_factory=list)  # linears writing to the stream: their outputs are rotated
    online: dict[str, Tensor] = field(default_factory=dict)
    handles: list = field(default_factory=list, repr=False)

    def unrotate(self, outputs: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        """Captured layer outputs (``[n, d]`` per batch) back in the original basis: ``y Q^T`` for the writers."""
        q = self.residual
        return {path: [t @ q.t().to(t) if path in self.writers else t for t in ts]  # (n, d) each
                for path, ts in outputs.items()}

    def install(self, model: nn.Module) -> None:
        self.remove()
        for path, matrix in self.online.items():
            hook = OnlineHadamard(matrix)
            self.handles.append(model.get_submodule(path).register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def check_rotatable(spec: ArchSpec) -> None:
    """Refuse, naming the ``model_type`` and what is missing, a model the rotation would change."""
    names = {"causal": "a causal LM", "pre_ln": "pre-LN blocks", "rmsnorm": "RMSNorm", "rotary": "rotary positions"}
    missing = [names[f] for f in NEEDS if not spec.has(f)]
    if spec.norm_offset_one:
        missing.append("a plain norm gain (not Gemma-style 1 + w)")
    if missing:
        raise UnsupportedArchitecture(
            f"the QuaRot rotation needs a causal pre-LN model with RMSNorm and rotary positions: model_type="
            f"{spec.model_type!r} ({spec.family} family: {spec.summary()}) lacks {', '.join(missing)}; "
            "use rtn, gptq, llmint8 or a migration on this model")


def _set(linear: nn.Linear, weight: Tensor) -> None:
    linear.weight.data = weight.to(linear.weight.dtype).contiguous()  # new storage: no tie survives


@torch.no_grad()
def _fold_norms(model: nn.Module, spec: ArchSpec) -> None:
    """``W <- W diag(gamma)`` for every linear reading a norm, then ``gamma <- 1``; unties the unembedding."""
    if spec.unembed is not None and spec.tied_unembed:
        head = model.get_submodule(spec.unembed)
        head.weight = nn.Parameter(head.weight.detach().clone())  # its own weight: it is rotated on its input side
        model.config.tie_word_embeddings = False
    groups = [(b.attn_norm, b.qkv) for b in spec.blocks] + [(b.mlp_norm, b.mlp_in) for b in spec.blocks]
    if spec.final_norm is not None and spec.unembed is not None:
        groups.append((spec.final_norm, (spec.unembed,)))
    for norm_path, linears in groups:
        norm = model.get_submodule(norm_path)
        gamma = norm.weight.detach().double()  # (d_model,)
        for path in linears:
            lin = model.get_submodule(path)
            _set(lin, lin.weight.double() * gamma[None, :])  # (out, d_model) column j times gamma_j
        norm.weight.data.fill_(1.0)


@torch.no_grad()
def rotate(model: nn.Module, spec: ArchSpec, seed: int) -> Rotation:
    """Fold the norms, rotate the residual stream by ``random_hadamard(d_model, seed)`` and install the
    online Hadamard before every down projection (in place); returns the :class:`Rotation`."""
    check_rotatable(spec)
    _fold_norms(model, spec)
    q = random_hadamard(spec.d_model, seed).to(model.get_submodule(spec.embed).weight.device)  # (d, d)
    emb = model.get_submodule(spec.embed)
    emb.weight.data = (emb.weight.double() @ q).to(emb.weight.dtype)  # (vocab, d) rows h -> h Q
    readers = [p for b in spec.blocks for p in (*b.qkv, *b.mlp_in)] + ([spec.unembed] if spec.unembed else [])
    for path in readers:
        lin = model.get_submodule(path)
        _set(lin, lin.weight.double() @ q)  # (out, d): y = (h Q)(W Q)^T = h W^T
    rotation = Rotation(seed, q.float().cpu(), [p for b in spec.blocks for p in (b.attn_out, b.mlp_out)])
    h_ff = (hadamard(spec.d_mlp) / spec.d_mlp**0.5).to(q)  # (d_mlp, d_mlp) orthogonal
    for b in spec.blocks:
        for path, online in ((b.attn_out, None), (b.mlp_out, h_ff)):
            lin = model.get_submodule(path)
            w = q.t() @ lin.weight.double()  # (d, in): writes h Q to the stream
            _set(lin, w @ online if online is not None else w)  # (d, d_mlp): (z H)(W H)^T = z W^T
            if lin.bias is not None:
                lin.bias.data = (lin.bias.double() @ q).to(lin.bias.dtype)  # (d,)
            if online is not None:
                rotation.online[path] = online.float()
    rotation.install(model)
    return rotation


__all__ = ["NEEDS", "OnlineHadamard", "Rotation", "check_rotatable", "hadamard", "random_hadamard", "rotate"]
