"""What a comparison means when the quantized model's residual basis is rotated (QuaRot).

A QuaRot model (:mod:`interpipe.quant.rotate`, methods ``quarot`` and ``quarot_gptq``) computes the FP
model's function in another basis of the residual stream: the norm gains are folded into the linears that
read them, the stream is ``h Q`` (``Q`` a random Hadamard, fused into the embedding, every reader ``W Q`` and
every writer ``Q^T W``), and each down projection's input ``z`` becomes ``z H`` inside the projection's hook,
where only its quantizer and weight see it. Heads and MLP layers keep their identity: queries, keys, values,
attention patterns and each head's ``z`` are in the original head space (q/k/v read ``h Q`` with ``W Q``),
the MLP neurons are the FP ones (``H`` acts after them), each head's and MLP's output is its FP output times
``Q`` and the unembedding undoes it, so logits, per-head direct effects, patching and ablation of a head or an
MLP, circuit membership and head classes compare one to one. What is read in the residual basis does not:
single stream dimensions, directions (probes, steering vectors, DLA split by direction) and the down
projection's rotated input; they compare only after rotating back with ``Q^T`` (the recipe's
``rotation.residual``).

What the study compares is all component-level: heads and MLPs, their patching effects, head classes and the
logit difference. Token attributions read the embeddings only through a dot product or an L2 norm under the
attribute stage's default reductions (``e . dy/de``, ``||dy/de||``, ``||e||``: unchanged by an orthogonal
``Q``); ``attribute.gradient_reduction=l1`` sums absolute gradient components, which depends on the basis, so
a rotated pair refuses those methods' drift with the reason.

>>> rotated("quarot"), rotated("rtn")
(True, False)
>>> attribution_reason("saliency", "l1")[:40]
'gradient_reduction=l1 sums |dy/de| over '
>>> attribution_reason("saliency", "default"), attribution_reason("attention", "l1")
('', '')
"""

from __future__ import annotations

from pathlib import Path

from interpipe.io import read_json
from interpipe.settings.quantize import ROTATIONS

NOTE = ("rotated residual basis (QuaRot: the stream is h Q; each down projection reads z H inside its hook): "
        "heads, MLP layers, their patching effects, attention patterns, per-head direct effects, head classes and "
        "logits compare one to one; residual directions and single stream dimensions would need Q^T from the recipe")
GRADIENT_METHODS = ("saliency", "grad_x_input", "integrated_gradients")  # reduced over d_model of the embeddings
BASIS_DEPENDENT_REDUCTIONS = ("l1",)  # sum of |components|: not invariant under an orthogonal Q


def rotated(method: str) -> bool:
    """Whether the quantization method rotates the residual stream."""
    return method in ROTATIONS


def note(method: str) -> str:
    """``pairs.csv``'s ``basis`` cell: what compares one to one in a rotated pair; ``""`` otherwise."""
    return NOTE if rotated(method) else ""


def attribution_reason(attribution_method: str, reduction: str) -> str:
    """Why an attribution method's drift means nothing across a rotation (``""`` when it does)."""
    if attribution_method in GRADIENT_METHODS and reduction in BASIS_DEPENDENT_REDUCTIONS:
        return (f"gradient_reduction={reduction} sums |dy/de| over the embedding dimensions, which the rotation "
                "changes (h Q): not comparable across a rotated pair; rerun attribute with the default reduction")
    return ""


def gradient_reduction(method_folder: str | Path) -> str:
    """The ``gradient_reduction`` one attribution method's run used, from the settings its
    ``attribution.json`` records (``default`` where it records none)."""
    meta = Path(method_folder) / "attribution.json"
    if not meta.is_file():
        return "default"
    settings = (read_json(meta).get("info") or {}).get("settings") or {}
    return str(settings.get("gradient_reduction", "default"))


__all__ = ["NOTE", "attribution_reason", "gradient_reduction", "note", "rotated"]
