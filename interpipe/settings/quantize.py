"""Settings of the quantization study (the ``quantize`` config group), validated on creation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MIGRATIONS = ("smoothquant", "osplus", "osplus_shift", "osplus_scale")  # osplus_shift/_scale: OS+ ablations
WEIGHT_METHODS = ("gptq",)  # weights calibrated by GPTQ (Frantar et al. 2022), activations as RTN
DECOMPOSED = ("llmint8",)  # LLM.int8() (Dettmers et al. 2022): vector-wise grids + outlier dimensions in 16 bits
ROTATIONS = ("quarot", "quarot_gptq")  # QuaRot (Ashkboos et al. 2024) rotation, then RTN / GPTQ weights
GPTQ_METHODS = ("gptq", "quarot_gptq")  # the methods whose weights GPTQ quantizes
METHODS = ("rtn",) + MIGRATIONS + WEIGHT_METHODS + DECOMPOSED + ROTATIONS
ABLATIONS = ("osplus_shift", "osplus_scale")  # OS+ with only its shift / only its scale
LAYER_KINDS = ("qkv", "attn_out", "fc1", "fc2", "head")  # quantizable linears: q/k/v, attention output, MLP in/out, heads
MIN_BITS, MAX_BITS = 2, 16  # 16 bits means "not quantized" (the papers' W16 / A16: FP16)
W_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
A_GRANULARITIES = ("per_tensor_static", "per_channel_static", "per_token_dynamic")
ACT_OVERRIDES = ("protocol",) + A_GRANULARITIES  # protocol: the activation grid of quantize.protocol
OBSERVERS = ("minmax", "avg_minmax")
PROTOCOLS = ("paper", "fine", "custom")
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


@dataclass(frozen=True)
class Grid:
    """The quantization grid of one bits setting: granularity and symmetry of both sides."""

    w_granularity: str
    w_symmetric: bool
    a_granularity: str
    a_symmetric: bool


def paper_grid(tag: str) -> Grid:
    """The OS+ protocol per bit width (``exp/opt/int8.yaml`` / ``int6.yaml`` of the official code).

    Eight bits or more on every quantized side: symmetric per-tensor weights and activations;
    fewer: per-channel asymmetric weights and per-tensor asymmetric activations.

    >>> paper_grid("w8a8").w_symmetric, paper_grid("w6a6").w_granularity, paper_grid("w16a6").a_symmetric
    (True, 'per_channel', False)
    """
    w, a = parse_bits(tag)
    if min(w, a) >= 8:
        return Grid("per_tensor", True, "per_tensor_static", True)
    return Grid("per_channel", False, "per_tensor_static", False)


def granularity_tag(grid: Grid, group_size: int) -> str:
    """Folder tag of a grid, e.g. ``wperchannel-asym-apertensor-asym``.

    >>> granularity_tag(Grid("per_group", True, "per_token_dynamic", False), 64)
    'wpergroup64-apertoken-asym'
    """
    w = {"per_tensor": "pertensor", "per_channel": "perchannel", "per_group": f"pergroup{group_size}"}[grid.w_granularity]
    a = {"per_tensor_static": "pertensor", "per_channel_static": "perchannel",
         "per_token_dynamic": "pertoken"}[grid.a_granularity]
    return f"w{w}{'' if grid.w_symmetric else '-asym'}-a{a}{'' if grid.a_symmetric else '-asym'}"


@dataclass
class QuantSettings:
    """One process runs every ``method x bits x calibration seed`` setting below on one model."""

    methods: list[str] = field(default_factory=lambda: list(METHODS[:3]))  # rtn | smoothquant | osplus (| osplus_shift | osplus_scale)
    bits: list[str] = field(default_factory=lambda: ["w8a8", "w6a6"])  # w<bits>a<bits>, 2..16 each; 16 = not quantized
    protocol: str = "paper"  # paper: the OS+ grid per bit width | fine: per-group W, per-token A | custom: the keys below
    w_granularity: str = "per_tensor"  # custom only: per_tensor | per_channel | per_group
    a_granularity: str = "per_tensor_static"  # custom only: per_tensor_static | per_channel_static | per_token_dynamic
    w_symmetric: bool = True  # custom only: absmax weight grid, as SmoothQuant
    a_symmetric: bool = True  # custom only: symmetric activation grid
    group_size: int = 64  # inputs per weight group (per_group and protocol=fine); must divide every layer's input dim
    observer: str = "avg_minmax"  # static ranges: per-example min/max averaged (OS+) | minmax (one global range)
    layers: list[str] = field(default_factory=lambda: ["qkv", "attn_out", "fc1", "fc2"])  # head stays FP, as in the papers
    alpha: float = 0.5  # SmoothQuant migration strength (paper default)
    calib_source: str = "corpus"  # corpus (train split text) or a task name (train prompts)
    calib_samples: int = 32  # small for the embedded pipeline; the papers use 128-512
    calib_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each seed draws its own calibration texts
    spread_bits: list[str] = field(default_factory=lambda: ["w6a6"])  # bits that run every calib seed ([] = all); others the first
    ablation_bits: list[str] = field(default_factory=list)  # bits the OS+ ablations (osplus_shift/_scale) run at ([] = all)
    eval_samples: int = 64  # per task / corpus split for the end metrics
    probe_samples: int = 32  # held-out texts for per-layer errors and the equivalence check
    max_length: int = 64  # tokens per example
    batch_size: int = 64  # fewer, larger forwards: the small models are overhead-bound on CPU
    osplus_steps: int = 20  # fewest grid points of the threshold search (official 100; 20 for the time budget)
    osplus_step: float = 0.0  # spacing that adds points for wide ranges (official 0.5; 0 = osplus_steps only)
    osplus_t_min: float = 1.0  # the search goes from max|x~| down to this threshold (official 1.0)
    osplus_samples: int = 16  # calibration examples the search's loss is measured on (0 = all, the official)
    top_k: int = 5  # outlier channels reported per input
    save_migrated: bool = True  # write the migrated FP model of every migration setting (first seed)
    export: list[str] = field(default_factory=list)  # <method>-<bits> settings written as model folders <model>-<method>-<bits>

    act_granularity: str = "protocol"  # activation granularity on every protocol (protocol = the protocol's own)
    int8_threshold: float = 6.0  # LLM.int8(): input dimensions with any |x| above this stay in 16 bits (paper: 6.0)
    gptq_block_size: int = 128  # GPTQ: columns quantized per lazy batch update (official 128)
    gptq_percdamp: float = 0.01  # GPTQ: dampening lambda = percdamp * mean(diag H) (official 0.01)

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
        for tag in (*self.spread_bits, *self.ablation_bits):  # entries outside quantize.bits select nothing
            parse_bits(tag)
        self._check_new_methods()
        for key, value, allowed in (("protocol", self.protocol, PROTOCOLS), ("observer", self.observer, OBSERVERS),
                                    ("act_granularity", self.act_granularity, ACT_OVERRIDES),
                                    ("w_granularity", self.w_granularity, W_GRANULARITIES),
                                    ("a_granularity", self.a_granularity, A_GRANULARITIES)):
            if value not in allowed:
                raise ValueError(f"quantize.{key}={value!r} is not one of {allowed}")
        if self.group_size < 1:
            raise ValueError(f"quantize.group_size={self.group_size} must be >= 1")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise ValueError(f"quantize.layers entry {kind!r} is not one of {LAYER_KINDS}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"quantize.alpha={self.alpha} must lie in [0, 1]")
        if not self.calib_seeds or len(set(self.calib_seeds)) != len(self.calib_seeds):
            raise ValueError(f"quantize.calib_seeds={list(self.calib_seeds)} must be a non-empty list of distinct seeds")
        for key in ("calib_samples", "eval_samples", "probe_samples", "max_length", "batch_size", "osplus_steps", "top_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"quantize.{key}={getattr(self, key)} must be >= 1")
        if self.osplus_samples < 0 or self.osplus_step < 0 or self.osplus_t_min < 0:
            raise ValueError("quantize.osplus_samples, osplus_step and osplus_t_min must be >= 0")
        run = [f"{m}-{b}" for m, b in self.grid()]
        for name in self.export:
            if name not in run:
                raise ValueError(f"quantize.export entry {name!r} is not a setting this run measures; "
                                 f"use <method>-<bits> from quantize.methods x quantize.bits: {run} (or [] for none)")

    def _check_new_methods(self) -> None:
        """The LLM.int8() and GPTQ settings."""
        if self.int8_threshold <= 0:
            raise ValueError(f"quantize.int8_threshold={self.int8_threshold} must be > 0 (the paper: 6.0)")
        if self.gptq_block_size < 1 or not 0.0 < self.gptq_percdamp < 1.0:
            raise ValueError(f"quantize.gptq_block_size={self.gptq_block_size} must be >= 1 and quantize.gptq_percdamp="
                             f"{self.gptq_percdamp} must lie in (0, 1) (official: 128, 0.01)")

    def grid_of(self, tag: str, method: str | None = None) -> Grid:
        """The grid of bits setting ``tag`` under this protocol (and ``act_granularity``) for ``method``.

        LLM.int8() has its own grid on every protocol: vector-wise, i.e. symmetric per output row of the
        weight and per token of the activation (Dettmers et al. 2022, Section 3.1).
        """
        if method in DECOMPOSED:
            return Grid("per_channel", True, "per_token_dynamic", True)
        if self.protocol == "paper":
            grid = paper_grid(tag)
        elif self.protocol == "fine":  # where OS+ reports most of its LLM gains: fine-grained both sides
            grid = Grid("per_group", False, "per_token_dynamic", False)
        else:
            grid = Grid(self.w_granularity, self.w_symmetric, self.a_granularity, self.a_symmetric)
        if self.act_granularity == "protocol":
            return grid
        return Grid(grid.w_granularity, grid.w_symmetric, self.act_granularity, grid.a_symmetric)

    def tag_of(self, tag: str, method: str | None = None) -> str:
        """Folder tag of bits setting ``tag``: the protocol name (``vectorwise`` for LLM.int8()), or the grid
        for ``custom``; an ``act_granularity`` override adds its activation tag (``paper-apertoken``)."""
        if method in DECOMPOSED:
            return f"vectorwise-t{self.int8_threshold:g}"
        if self.protocol == "custom":
            return granularity_tag(self.grid_of(tag), self.group_size)
        if self.act_granularity == "protocol":
            return self.protocol
        return f"{self.protocol}-aper{self.act_granularity.split('_')[1]}"  # e.g. paper-apertoken

    def seeds_of(self, tag: str) -> list[int]:
        """Calibration seeds run at bits ``tag``: all of them on ``spread_bits`` (all bits when empty), else the first."""
        return list(self.calib_seeds) if not self.spread_bits or tag in self.spread_bits else list(self.calib_seeds[:1])

    def grid(self) -> list[tuple[str, str]]:
        """Every ``(method, bits)`` setting, methods outermost; the OS+ ablations only at ``ablation_bits``."""
        return [(m, b) for m in self.methods for b in self.bits
                if m not in ABLATIONS or not self.ablation_bits or b in self.ablation_bits]
