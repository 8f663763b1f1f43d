"""Fake norms: a LayerNorm/RMSNorm whose per-token scale is measured, then frozen, use by use.

A norm computes ``y = (x - mean x) / s(x) * g + b`` (LayerNorm, ``s`` the std) or ``x / s(x) * g``
(RMSNorm, ``s`` the RMS). :class:`FakeNorm` keeps the norm's parameters and adds:

- a running average of ``s`` over the real tokens (not padding) at the ordinary positions (not the
  *special* ones); this mean is the scale the frozen norm divides by (the official recipe's
  ``average_std``: the mean over real tokens, so that the typical token keeps its size), or, with a
  ``quantile``, the running average of that quantile of the tokens' scales (a frozen scale above most
  tokens' own: a gated MLP grows about quadratically in its input, so a token divided by less than
  its own scale is amplified block after block; see :func:`~interpipe.weights.lnfree.recipe.frozen_copy`);
- a running average of ``s`` at each *special position* (position 0, and any position whose scale
  is an outlier): while special, that position divides by its own frozen scale (the official
  ``bos_std``), since one shared scale would make it ~100x too large at every later block;
- *uses*: the attention norm has two, ``qk`` (the input of the query/key projections) and ``v`` (the
  input of the value projection), frozen at different steps as in the official recipe; the MLP and
  final norms have one, ``all``. The ``v`` output reaches the value projection through
  :class:`ValueInput`, which replaces that projection while the model fine-tunes.

:func:`unwrap_to_lnfree` turns every frozen fake norm back into its stock module with a huge epsilon
(``sqrt(s^2 + eps) ~ sqrt(eps)``) and gain ``g sqrt(eps) / s``, folding the ratio of the ``v`` scale
to the ``qk`` scale into the value weights, so that stock ``from_pretrained`` loads the result.
"""

from __future__ import annotations

import torch

from interpipe.models.arch import ArchSpec, UnsupportedArchitecture
from interpipe.weights.common import architecture

EPS_NAMES = ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "norm_eps")


def norm_eps(norm: torch.nn.Module) -> float:
    """The epsilon of an HF norm module (``eps`` of ``nn.LayerNorm``, ``variance_epsilon`` of RMSNorms)."""
    eps = getattr(norm, "eps", None)
    return float(eps if eps is not None else norm.variance_epsilon)


class FakeNorm(torch.nn.Module):
    """A norm whose scale is tracked (``track``) and frozen use by use (:meth:`freeze`).

    ``special``: the positions with a scale of their own until :meth:`release` (position 0 first of
    all). ``quantile``: the statistic of the ordinary tokens' scales that is tracked (None: their mean).
    ``token_mask`` (batch, pos), set by :func:`set_token_mask`, marks the real tokens of the next
    forward; without it every position is real. ``kept``, when a list, collects every ordinary token's
    scale seen while tracking (calibration: :meth:`calibration_scale`).
    """

    def __init__(self, norm: torch.nn.Module, ema: float, kind: str = "layernorm", offset_one: bool = False,
                 uses: tuple[str, ...] = ("all",), special: tuple[int, ...] = (), quantile: float | None = None):
        super().__init__()
        self.weight, self.bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        self.centre, self.offset_one, self.eps, self.ema = kind == "layernorm", offset_one, norm_eps(norm), ema
        self.uses = tuple(uses)
        self.__dict__["original"] = norm  # the HF module, restored by unwrap_to_lnfree (not a submodule)
        n_use, n_special = len(self.uses), len(special)
        self.register_buffer("special", torch.tensor(list(special), dtype=torch.long))  # (n_special,)
        self.register_buffer("avg", torch.zeros(()))  # running mean scale, ordinary real tokens
        self.register_buffer("avg_special", torch.zeros(n_special))  # running mean scale at each special position
        self.register_buffer("frozen", torch.zeros(n_use, dtype=torch.bool))
        self.register_buffer("frozen_scale", torch.zeros(n_use))
        self.register_buffer("frozen_special", torch.zeros(n_use, n_special))
        self.register_buffer("special_weight", torch.ones(n_special))  # 1: own scale ... 0: released (the shared one)
        self.quantile = quantile
        self.kept: list[torch.Tensor] | None = None  # (n,) ordinary scales per tracked forward, when collecting
        self.track = False
        self.aux = False  # keep the auxiliary term (scales' spread, with gradient) of the last forward
        self.aux_special_factor = 1.0  # weight of the special positions' tokens in that term, the others' 1
        self.token_mask: torch.Tensor | None = None
        self.aux_term: torch.Tensor | None = None
        self.value_input: torch.Tensor | None = None  # the ``v`` output of the last forward, for ValueInput
        self.position0_scale: torch.Tensor | None = None  # () mean live scale at position 0, last tracked forward
        self.position_sum, self.position_count = torch.zeros(0), torch.zeros(0)  # (pos,) diagnostics

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            x = x * (self.weight + 1.0 if self.offset_one else self.weight)
        return x + self.bias if self.bias is not None else x

    @property
    def special_live(self) -> torch.Tensor:
        """(n_special,) bool: the special positions that still have (some of) a scale of their own."""
        return self.special_weight > 0

    def scale_for(self, use: str, live: torch.Tensor) -> torch.Tensor:
        """The scale ``use`` divides by, (batch, pos, 1): the live one until frozen, then the frozen
        shared scale, with each special position's own frozen scale to the power of its weight times
        the shared one to the rest (weight 1: its own; 0: released)."""
        u = self.uses.index(use)
        if not bool(self.frozen[u]):
            return live
        scale = self.frozen_scale[u].expand_as(live).clone()  # (batch, pos, 1)
        for j, pos in enumerate(self.special.tolist()):
            if bool(self.special_live[j]) and pos < scale.shape[1]:
                w = self.special_weight[j]
                scale[:, pos] = self.frozen_special[u, j] ** w * self.frozen_scale[u] ** (1 - w)
        return scale.to(live.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(-1, keepdim=True) if self.centre else x  # (batch, pos, d_model)
        live = (xc.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # (batch, pos, 1)
        if self.track:
            self.position0_scale = live[:, 0, 0].detach().float().mean()
        if self.track and not bool(self.frozen.all()):
            self._update(live[..., 0].detach())
        if self.aux:
            self.aux_term = self._spread(live[..., 0])
        same = len(self.uses) == 2 and not bool(self.frozen.any())  # both uses still live: one output
        outs = {use: self._affine((xc / self.scale_for(use, live)).to(x.dtype)) for use in self.uses[:1 if same else None]}
        self.value_input = outs.get("v")
        return outs["all"] if "all" in outs else outs["qk"]

    def real_mask(self, scale: torch.Tensor) -> torch.Tensor:
        """Real (non-padding) tokens of this forward, (batch, pos) bool; all without a matching mask."""
        mask = self.token_mask
        if mask is not None and mask.shape == scale.shape:
            return mask.to(scale.device).clone()
        return torch.ones_like(scale, dtype=torch.bool)

    def ordinary_mask(self, scale: torch.Tensor) -> torch.Tensor:
        """Real tokens at ordinary (non-special) positions, (batch, pos) bool."""
        mask = self.real_mask(scale)
        for pos in self.special.tolist():
            if pos < mask.shape[1]:
                mask[:, pos] = False
        return mask

    def _spread(self, scale: torch.Tensor) -> torch.Tensor:
        """Mean squared log-ratio of every real token's scale, (batch, pos), to the ordinary tokens' running
        statistic: special positions included (the official auxiliary loss pulls BOS and EOT towards the
        average too, which a position-0 scale ~100x the others needs before its release); the log keeps
        the term scale-free across norms and a 100x ratio at 21, not 10^4."""
        real, ordinary = self.real_mask(scale.detach()), self.ordinary_mask(scale.detach())
        ref = self.avg if float(self.avg) > 0 else scale.detach()[ordinary].mean()
        weight = torch.where(ordinary, 1.0, self.aux_special_factor)[real]  # (n_real,)
        return (weight * torch.log(scale[real] / ref).pow(2)).sum() / real.sum()

    @torch.no_grad()
    def _update(self, scale: torch.Tensor) -> None:  # scale: (batch, pos)
        ordinary, real = self.ordinary_mask(scale), self.real_mask(scale)
        if bool(ordinary.any()):
            self._ema(self.avg, self.statistic(scale[ordinary], self.quantile))
            if self.kept is not None:
                self.kept.append(scale[ordinary].float().cpu())
        for j, pos in enumerate(self.special.tolist()):
            if pos < scale.shape[1] and bool(real[:, pos].any()):
                self._ema(self.avg_special[j], scale[:, pos][real[:, pos]].mean())
        self._positions(scale, real)

    @staticmethod
    def statistic(scales: torch.Tensor, quantile: float | None) -> torch.Tensor:
        """The mean of ``scales`` (n,), or their ``quantile``."""
        return scales.mean() if quantile is None else torch.quantile(scales.float(), quantile).to(scales.dtype)

    def calibration_scale(self, quantile: float | None) -> torch.Tensor:
        """The shared scale from the calibration pass: the mean (None) or the ``quantile`` of every
        ordinary token's scale collected in ``kept`` (the running average when nothing was kept)."""
        if not self.kept:
            return self.avg.clone()
        return self.statistic(torch.cat(self.kept), quantile).to(self.avg)

    def _ema(self, buffer: torch.Tensor, now: torch.Tensor) -> None:
        buffer.copy_(now if float(buffer) == 0 else self.ema * buffer + (1 - self.ema) * now)

    def _positions(self, scale: torch.Tensor, real: torch.Tensor) -> None:
        """Accumulate the mean scale per position (diagnostics, outlier detection)."""
        width = scale.shape[1]
        if self.position_sum.numel() < width:
            grow = width - self.position_sum.numel()
            self.position_sum = torch.cat([self.position_sum, torch.zeros(grow)])
            self.position_count = torch.cat([self.position_count, torch.zeros(grow)])
        self.position_sum[:width] += (scale.float() * real).sum(0).cpu()
        self.position_count[:width] += real.sum(0).cpu().float()

    def position_means(self) -> torch.Tensor:
        """Mean tracked scale at each position, (pos,) (nan where no real token was seen)."""
        return self.position_sum / self.position_count.clamp(min=1) + torch.where(self.position_count > 0, 0.0, float("nan"))

    @torch.no_grad()
    def freeze(self, use: str, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Freeze ``use`` at the running averages (the shared one, or ``scale`` where given); returns the
        frozen scales (shared, then special)."""
        u = self.uses.index(use)
        self.frozen[u] = True
        self.frozen_scale[u] = self.avg if scale is None else scale
        self.frozen_special[u] = torch.where(self.avg_special > 0, self.avg_special, self.avg)
        return torch.cat([self.frozen_scale[u:u + 1], self.frozen_special[u]])

    @torch.no_grad()
    def release(self, position: int, weight: float = 0.0) -> None:
        """Position ``position`` keeps ``weight`` of its own scale (geometric mix with the shared one);
        0: it stops having a scale of its own."""
        hit = self.special == position
        self.special_weight[hit] = float(weight)

    def position0_ratio(self) -> torch.Tensor | None:
        """() position 0's live scale in the last tracked forward over the shared scale (frozen, else
        the running statistic): how far a release of position 0 would be from its own scale."""
        if self.position0_scale is None:
            return None
        shared = self.frozen_scale[0] if bool(self.frozen[0]) else self.avg
        return self.position0_scale / shared.clamp(min=1e-30)

    def first_ratio(self) -> float:
        """Position 0's mean scale over the ordinary positions' mean (nan if position 0 is not special)."""
        hit = (self.special == 0).nonzero()
        if len(hit) == 0 or float(self.avg) == 0:
            return float("nan")
        return float(self.avg_special[int(hit[0])] / self.avg)


class ValueInput(torch.nn.Module):
    """Replaces a value projection (or a fused q/k/v projection) so that its value part reads the
    attention norm's ``v`` output; the rest reads the usual (``qk``) input. Same parameter names."""

    def __init__(self, projection: torch.nn.Module, norm: FakeNorm, value_out: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = projection.weight, getattr(projection, "bias", None)
        self.__dict__["original"] = projection
        self.__dict__["norm"] = norm
        self.register_buffer("value_out", value_out, persistent=False)  # (out,) bool; None: all outputs are value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v_in, self.norm.value_input = self.norm.value_input, None
        if v_in is None or v_in.shape != x.shape:
            return self.original(x)
        if self.value_out is None:
            return self.original(v_in)
        return torch.where(self.value_out, self.original(v_in), self.original(x))  # (batch, pos, out)


def value_outputs(spec: ArchSpec, layer: int) -> tuple[str, torch.Tensor | None]:
    """The module carrying layer ``layer``'s values and which of its outputs are values (None: all)."""
    qkv = spec.blocks[layer].qkv
    if len(qkv) == 3:
        return qkv[2], None
    d = spec.n_heads * spec.d_head
    if spec.family == "gpt2":  # Conv1D columns [q | k | v]
        return qkv[0], torch.arange(3 * d) >= 2 * d
    if spec.family == "gpt_neox":  # per head [q_h | k_h | v_h]
        return qkv[0], (torch.arange(3 * d) % (3 * spec.d_head)) >= 2 * spec.d_head
    raise UnsupportedArchitecture(f"the q/k and v uses of the attention norm cannot be split for "
                                  f"model_type={spec.model_type!r}; set weights.lnfree.split_qkv=false")


def set_token_mask(wrapped: dict[str, FakeNorm], mask: torch.Tensor | None) -> None:
    """Mark the real (non-padding) tokens, (batch, pos), of the next forward for every fake norm."""
    for norm in wrapped.values():
        norm.token_mask = None if mask is None else mask.bool()


def _attention_norms(spec: ArchSpec) -> dict[str, int]:
    return {b.attn_norm: b.index for b in spec.blocks if b.attn_norm != b.mlp_norm}


def norm_paths(spec: ArchSpec) -> list[str]:
    """Every norm: each block's MLP norm, each block's attention norm, the final norm."""
    names = [b.mlp_norm for b in spec.blocks] + [b.attn_norm for b in spec.blocks] + [spec.final_norm]
    return list(dict.fromkeys(names))


def wrap_norms(model, ema: float, split_qkv: bool = True, special: tuple[int, ...] = (0,),
               quantile: float | None = None) -> dict[str, FakeNorm]:
    """Replace every norm by a :class:`FakeNorm` tracking the mean (or ``quantile``) of its scales (and,
    with ``split_qkv``, each value projection by a :class:`ValueInput`), in place; returns the fake
    norms by path."""
    spec = architecture(model, "lnfree")
    attention = _attention_norms(spec) if split_qkv else {}
    out = {}
    for name in norm_paths(spec):
        uses = ("qk", "v") if name in attention else ("all",)
        fake = FakeNorm(model.get_submodule(name), ema, spec.norm_kind, spec.norm_offset_one, uses, special, quantile)
        _replace(model, name, fake)
        out[name] = fake
        if name in attention:
            path, value_out = value_outputs(spec, attention[name])
            _replace(model, path, ValueInput(model.get_submodule(path), fake, value_out))
    return out


def _replace(model, path: str, module: torch.nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@torch.no_grad()
def unwrap_to_lnfree(model, wrapped: dict[str, FakeNorm], big_eps: float) -> None:
    """Put the stock modules back: each norm with ``eps = big_eps`` and gain ``g sqrt(big_eps) / s``
    (``s`` its ``qk``/``all`` frozen scale); a value projection's value outputs scaled by
    ``r = s_qk / s_v`` (plus ``(1 - r) W_v b`` in its bias where the norm has a bias ``b``)."""
    for name, norm in wrapped.items():
        if not bool(norm.frozen.all()):
            raise ValueError(f"norm {name} was never frozen (uses {norm.uses}: {norm.frozen.tolist()}); lengthen the schedule")
        if bool(norm.special_live.any()):
            raise ValueError(f"norm {name} still has its own scale at positions "
                             f"{norm.special[norm.special_live].tolist()} (a stock norm has one scale); release them first")
    for name, module in list(model.named_modules()):
        if isinstance(module, ValueInput):
            norm = module.norm
            ratio = float(norm.frozen_scale[0] / norm.frozen_scale[1])  # s_qk / s_v
            _fold_value(module.original, module.value_out, ratio, norm.bias)
            _replace(model, name, module.original)
    for name, norm in wrapped.items():
        plain, factor = norm.original, big_eps ** 0.5 / norm.frozen_scale[0]
        if plain.weight is None:
            raise UnsupportedArchitecture(f"norm {name} has no gain to carry the frozen scale")
        plain.weight.copy_((plain.weight + 1.0) * factor - 1.0 if norm.offset_one else plain.weight * factor)
        setattr(plain, "eps" if hasattr(plain, "eps") else "variance_epsilon", big_eps)
        _replace(model, name, plain)
    for key in EPS_NAMES:
        if hasattr(model.config, key):
            setattr(model.config, key, big_eps)


def _fold_value(projection: torch.nn.Module, value_out: torch.Tensor | None, ratio: float,
                norm_bias: torch.Tensor | None) -> None:
    """``v(y_v) = r W_v y_qk + (1 - r) W_v b + b_v``: fold it into the projection's value outputs."""
    conv = type(projection).__name__ == "Conv1D"  # GPT-2: weight (in, out)
    weight = projection.weight.T if conv else projection.weight  # (out, in) view
    rows = value_out if value_out is not None else torch.ones(weight.shape[0], dtype=torch.bool)
    rows = rows.to(weight.device)
    if norm_bias is not None:
        shift = (1 - ratio) * (weight[rows] @ norm_bias)  # (n_value,)
        if projection.bias is None:
            raise UnsupportedArchitecture("a LayerNorm bias cannot be folded into a value projection without a bias")
        projection.bias[rows] += shift
    weight[rows] *= ratio
