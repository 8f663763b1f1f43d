"""Token attribution: NormXLogit (Abbasi, Modarres, Pilehvar, "NormXLogit: The Head-on-Top Never
Lies", EMNLP 2025, arXiv 2411.16252) against gradient, attention and random baselines.

>>> from interpipe.attribution import METHODS
>>> METHODS[:3]
('normxlogit', 'norm', 'logat')

Typical use (a causal LM or a sequence classifier from ``interpipe.models``)::

    sm = ScoredModel(model, kind="causal_lm")
    batch = encode_rows(tokenizer, rows, kind="causal_lm", max_length=128)
    result = attribute(sm, batch, "normxlogit")
    result.save("out/normxlogit"); result.plot()
"""

from interpipe.attribution.inputs import Batch, encode_rows
from interpipe.attribution.methods import REGISTRY, attribute, input_gradients, quadrature
from interpipe.attribution.model import ScoredModel, eager_attention
from interpipe.attribution.result import Attribution
from interpipe.attribution.sequence import attribute_positions
from interpipe.settings.attribute import METHODS, AttributeSettings

__all__ = ["METHODS", "REGISTRY", "AttributeSettings", "Attribution", "Batch", "ScoredModel",
           "attribute", "attribute_positions", "eager_attention", "encode_rows", "input_gradients", "quadrature",
           "run_attribute"]


def run_attribute(*args, **kwargs):
    """The ``attribute`` stage's library call (see :func:`interpipe.attribution.study.run_attribute`)."""
    from interpipe.attribution.study import run_attribute as run

    return run(*args, **kwargs)
