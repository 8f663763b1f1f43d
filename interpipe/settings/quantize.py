"""Settings of the quantization study (the ``quantize`` config group), validated on creation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

METHODS = ("rtn", "smoothquant", "osplus")
LAYER_KINDS = ("qkv", "attn_out", "fc1", "fc2", "head")  # quantizable linears: q/k/v, attention output, MLP in/out, heads
MIN_BITS, MAX_BITS = 2, 16
W_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
A_GRANULARITIES = ("per_tensor_static", "per_token_dynamic")
_BITS = re.compile(r"^w(\d+)a(\d+)$")


def check_bits(bits: int, key: str = "bits") -> int:
    """Raise ``ValueError`` naming ``key`` unless ``2 <= bits <= 16``."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{key}={bits!r} is outside the supported range {MIN_BITS}..{MAX_BITS} bits")
    return bits


def parse_bits(tag: str) -> tuple[int, int]:
    """``"w8a8" -> (8, 8)``; bits must lie in 2..16.

    >>> parse_bits("w6a8")
    (6, 8)
    """
    match = _BITS.match(str(tag))
    if not match:
        raise ValueError(f"quantize.bits entry {tag!r} is not of the form w<bits>a<bits> (e.g. w8a8)")
    w, a = int(match[1]), int(match[2])
    check_bits(w, f"quantize.bits {tag}: weight bits")
    check_bits(a, f"quantize.bits {tag}: activation bits")
    return w, a


def granularity_tag(w_granularity: str, a_granularity: str, group_size: int) -> str:
    """Folder tag: ``pertensor`` when both sides are per tensor, else ``w<g>-a<g>``.

    >>> granularity_tag("per_channel", "per_token_dynamic", 64)
    'wperchannel-apertoken'
    """
    if w_granularity == "per_tensor" and a_granularity == "per_tensor_static":
        return "pertensor"
    w = {"per_tensor": "pertensor", "per_channel": "perchannel", "per_group": f"pergroup{group_size}"}[w_granularity]
    a = {"per_tensor_static": "pertensor", "per_token_dynamic": "pertoken"}[a_granularity]
    return f"w{w}-a{a}"


@dataclass
class QuantSettings:
    """One process runs every ``method x bits`` setting below on one model."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))  # rtn | smoothquant | osplus
    bits: list[str] = field(default_factory=lambda: ["w8a8", "w6a6"])  # w<bits>a<bits>, 2..16 each
    w_granularity: str = "per_tensor"  # per_tensor | per_channel | per_group
    a_granularity: str = "per_tensor_static"  # static per tensor shows the methods apart; per-token is near lossless
    group_size: int = 64  # inputs per weight group (per_group only); must divide every layer's input dim
    w_symmetric: bool = True  # absmax grid for weights, as SmoothQuant
    a_symmetric: bool = True  # symmetric grid for activations: the case the OS+ shift addresses
    layers: list[str] = field(default_factory=lambda: ["qkv", "attn_out", "fc1", "fc2"])  # head stays FP, as in the papers
    alpha: float = 0.5  # SmoothQuant migration strength (paper default)
    calib_source: str = "corpus"  # corpus (train split text) or a task name (train prompts)
    calib_samples: int = 32  # small for the embedded pipeline; the papers use 128-512
    eval_samples: int = 64  # per task / corpus split for the end metrics
    probe_samples: int = 32  # held-out texts for per-layer errors and the equivalence check
    max_length: int = 64  # tokens per example
    batch_size: int = 64  # fewer, larger forwards: the small models are overhead-bound on CPU
    osplus_steps: int = 20  # grid points of the threshold search (paper: max(100, max|x|/0.5))
    osplus_min_ratio: float = 0.05  # the search goes from max|x~| down to this fraction of it
    osplus_samples: int = 16  # calibration examples the threshold search's loss is measured on
    top_k: int = 5  # outlier channels reported per input
    save_migrated: bool = True  # write the migrated FP model of every smoothquant/osplus setting

    def __post_init__(self) -> None:
        from interpipe.data.prepare import ALL_TASKS

        if self.calib_source != "corpus" and self.calib_source not in ALL_TASKS:
            raise ValueError(f"quantize.calib_source={self.calib_source!r} is neither 'corpus' nor a task of {list(ALL_TASKS)}")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"quantize.methods entry {m!r} is not one of {METHODS}")
        if not self.methods or not self.bits:
            raise ValueError("quantize.methods and quantize.bits must not be empty")
        for tag in self.bits:
            parse_bits(tag)
        if self.w_granularity not in W_GRANULARITIES:
            raise ValueError(f"quantize.w_granularity={self.w_granularity!r} is not one of {W_GRANULARITIES}")
        if self.a_granularity not in A_GRANULARITIES:
            raise ValueError(f"quantize.a_granularity={self.a_granularity!r} is not one of {A_GRANULARITIES}")
        if self.group_size < 1:
            raise ValueError(f"quantize.group_size={self.group_size} must be >= 1")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise ValueError(f"quantize.layers entry {kind!r} is not one of {LAYER_KINDS}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"quantize.alpha={self.alpha} must lie in [0, 1]")
        for key in ("calib_samples", "eval_samples", "probe_samples", "max_length", "batch_size", "osplus_steps", "osplus_samples", "top_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"quantize.{key}={getattr(self, key)} must be >= 1")
        if not 0.0 < self.osplus_min_ratio <= 1.0:
            raise ValueError(f"quantize.osplus_min_ratio={self.osplus_min_ratio} must lie in (0, 1]")

    @property
    def granularity(self) -> str:
        return granularity_tag(self.w_granularity, self.a_granularity, self.group_size)

    def grid(self) -> list[tuple[str, str]]:
        """Every ``(method, bits)`` setting, methods outermost."""
        return [(m, b) for m in self.methods for b in self.bits]
