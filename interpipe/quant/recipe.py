"""A quantization recipe: what a loader re-applies to an exported quantized model folder.

An exported folder (:func:`interpipe.quant.export.save_quantized`) is a plain Hugging Face folder
whose target linears already hold their fake-quantized weights (the dequantized grid values, so
stock ``from_pretrained`` gives the quantized weights), plus:

- ``quantization.json``: method, bits, protocol, the weight and activation grids
  (:class:`~interpipe.quant.fake.WeightSpec` / :class:`~interpipe.quant.fake.ActSpec` fields) and
  the module paths of the quantized linears;
- ``quantization.safetensors``: per layer the static activation range (``<module>.x_min`` /
  ``.x_max``), and for OS+ behind a bias-free norm the input shift ``delta`` (``.input_shift``)
  with its output offset ``W delta`` (``.shift_bias``, from the full-precision weight); for a
  migrated post-LN model the shortcut restores (``<module>.shortcut_scale`` / ``.shortcut_shift``);
  for a QuaRot model the online Hadamard of the down projections (``<module>.online_hadamard``) and
  the residual rotation ``Q`` (``rotation.residual``: the stream is ``h Q``, for analyses that want the
  original basis back).

An LLM.int8() recipe carries its ``threshold``: the hook keeps each example's outlier input columns
unquantized and the stored weight is the vector-wise ``Q(W)``, so the 16-bit part multiplies dequantized
weight columns (as bitsandbytes does; the study's in-memory layer uses the full-precision columns). A
QuaRot folder holds the rotated weights (norm gains folded, unembedding untied): stock
``from_pretrained`` without the recipe's online Hadamard computes a different function.

:func:`apply_recipe` re-applies the activation side with forward hooks on the original modules
(nothing replaced, no attribute added): a pre-hook feeds the linear ``Q(x - delta)``, a forward
hook adds ``W delta``, so the layer computes ``Q(W) Q(x - delta) + b + W delta`` as
:class:`~interpipe.quant.layers.QuantLinear` does. The rounding passes gradients straight through
(the straight-through estimator), so gradient attributions stay defined on a quantized model.

TransformerLens's ``TransformerBridge`` calls the original linears, except a fused q/k/v
projection (GPT-2's ``c_attn``), which it splits into new q, k and v linears when it boots; a
:class:`SplitWatcher` on each block gives those the fused layer's quantizer on the first forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from interpipe.io import read_json, write_json
from interpipe.quant.fake import ActSpec, WeightSpec, decomposed_activation, quantize_activation
from interpipe.typing import Float, Tensor

FILE = "quantization.json"
TENSORS = "quantization.safetensors"


class BrokenRecipe(RuntimeError):
    """A model folder whose quantization recipe is missing a file, a tensor or a layer."""


@dataclass
class Recipe:
    """How one exported model is quantized; ``tensors`` holds the per-layer ranges and shifts."""

    method: str  # rtn | smoothquant | osplus | ...
    bits: str  # w<bits>a<bits>
    protocol: str  # paper | fine | custom
    weight: dict  # WeightSpec fields (the stored weights are already on this grid)
    activation: dict  # ActSpec fields
    layers: list[str]  # module paths of the quantized linears
    base_model: str = ""
    calib_seed: int = 0
    tensors: dict[str, Tensor] = field(default_factory=dict, repr=False)
    threshold: float | None = None  # LLM.int8(): input columns with any |x| above it stay unquantized
    rotation: dict | None = None  # QuaRot: the residual basis is rotated (seed, what it means)

    @property
    def w_spec(self) -> WeightSpec:
        return WeightSpec(**self.weight)

    @property
    def a_spec(self) -> ActSpec:
        return ActSpec(**self.activation)

    def save(self, folder: str | Path) -> Path:
        """Write ``quantization.json`` and ``quantization.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(folder / TENSORS))
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tensors"}
        return write_json(folder / FILE, {**meta, "tensors": TENSORS, "weights": "stored fake-quantized"})

    @classmethod
    def load(cls, folder: str | Path) -> Recipe:
        """Read a folder's recipe; a missing or unreadable tensor file raises :class:`BrokenRecipe`."""
        folder = Path(folder)
        meta = read_json(folder / FILE)
        path = folder / meta.pop("tensors", TENSORS)
        meta.pop("weights", None)
        fix = (f"re-export the folder: run the quantize stage of {meta.get('base_model') or 'its base model'} with "
               f"quantize.export=[{meta.get('method')}-{meta.get('bits')}] (`dvc repro -f quantize@<base model>`)")
        if not path.exists():
            raise BrokenRecipe(f"{path} is missing (the recipe {folder / FILE} needs it); {fix}")
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        except Exception as exc:
            raise BrokenRecipe(f"{path} is damaged ({type(exc).__name__}: {exc}); {fix}") from exc
        recipe = cls(**meta, tensors=tensors)
        missing = [f"{m}.{k}" for m in recipe.layers for k in ("x_min", "x_max")
                   if recipe.a_spec.static and f"{m}.{k}" not in tensors]
        if missing:
            raise BrokenRecipe(f"{path} lacks the static ranges {missing[:3]} (of {len(missing)}); {fix}")
        return recipe


def is_quantized_folder(folder: str | Path) -> bool:
    """Whether ``folder`` carries a quantization recipe."""
    return (Path(folder) / FILE).exists()


class _StraightThrough(torch.autograd.Function):
    """Forward: the fake-quantized activation, exactly; backward: the gradient unchanged."""

    @staticmethod
    def forward(ctx, x, quantizer):
        return quantizer.quantize(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ActQuantizer:
    """Forward pre-hook: a linear's input ``x`` becomes ``Q(x - delta)`` on the layer's grid.

    With ``online`` (QuaRot's online Hadamard ``H``) the input is first ``x H`` (differentiable: gradients
    go back through ``H``); with ``threshold`` (LLM.int8()) ``Q`` keeps each example's outlier columns
    unquantized (:func:`~interpipe.quant.fake.decomposed_activation`).
    """

    def __init__(self, spec: ActSpec, x_min: Tensor | None, x_max: Tensor | None, shift: Tensor | None,
                 threshold: float | None = None, online: Tensor | None = None):
        self.spec, self.x_min, self.x_max, self.shift = spec, x_min, x_max, shift
        self.threshold, self.online = threshold, online

    def quantize(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        shifted = x if self.shift is None else x - self.shift.to(x)  # (..., d_in) what the quantizer sees
        if self.threshold is not None:
            return decomposed_activation(shifted, self.spec, self.threshold)
        lo = None if self.x_min is None else self.x_min.to(x.device)  # float32: the grid's scale comes from it
        hi = None if self.x_max is None else self.x_max.to(x.device)
        return quantize_activation(shifted, self.spec, lo, hi)

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0] if self.online is None else args[0] @ self.online.to(args[0])  # (..., d_in) x H
        return (_StraightThrough.apply(x, self), *args[1:])


class OutputOffset:
    """Forward hook adding a constant ``W delta`` (d_out,) to a linear's output."""

    def __init__(self, offset: Tensor):  # (d_out,)
        self.offset = offset

    def __call__(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return out + self.offset.to(out)


def restore_residual(args: tuple, kwargs: dict, scale: Tensor, shift: Tensor) -> tuple[tuple, dict]:
    """A post-LN residual module's ``(args, kwargs)`` with its residual input ``h~`` made ``h~ * s + z``
    (``BertSelfOutput``/``BertOutput``: ``input_tensor``, by keyword or second positional)."""
    if "input_tensor" in kwargs:
        r = kwargs["input_tensor"]
        return args, {**kwargs, "input_tensor": r * scale.to(r) + shift.to(r)}
    hidden, r, *rest = args
    return (hidden, r * scale.to(r) + shift.to(r), *rest), kwargs


class ShortcutRestore:
    """Forward pre-hook of a post-LN residual module: its residual input ``h~`` becomes ``h~ * s + z``."""

    def __init__(self, scale: Tensor, shift: Tensor):
        self.scale, self.shift = scale, shift

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        return restore_residual(args, kwargs, self.scale, self.shift)


@dataclass
class InstalledRecipe:
    """The hooks :func:`apply_recipe` installed; :meth:`remove` restores the plain model."""

    quantizers: dict[str, ActQuantizer]
    handles: list = field(default_factory=list)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _module(model: nn.Module, path: str, recipe: Recipe) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise BrokenRecipe(f"the recipe ({recipe.base_model}-{recipe.method}-{recipe.bits}) quantizes layer "
                           f"{path!r}, which this {type(model).__name__} does not have; load the folder the "
                           f"recipe was exported with") from exc


def apply_recipe(model: nn.Module, recipe: Recipe) -> InstalledRecipe:
    """Install the recipe's activation quantizers (and input shifts, shortcut restores) on ``model``."""
    device = next(model.parameters()).device
    t, spec = {k: v.to(device) for k, v in recipe.tensors.items()}, recipe.a_spec  # hooks follow x's device too
    installed = InstalledRecipe({})
    for path in recipe.layers:
        module = _module(model, path, recipe)
        hook = ActQuantizer(spec, t.get(f"{path}.x_min"), t.get(f"{path}.x_max"), t.get(f"{path}.input_shift"),
                            recipe.threshold, t.get(f"{path}.online_hadamard"))
        installed.quantizers[path] = hook
        installed.handles.append(module.register_forward_pre_hook(hook))
        if f"{path}.shift_bias" in t:
            installed.handles.append(module.register_forward_hook(OutputOffset(t[f"{path}.shift_bias"])))
    for key in sorted(k for k in t if k.endswith(".shortcut_scale")):
        path = key[: -len(".shortcut_scale")]
        restore = ShortcutRestore(t[key], t[f"{path}.shortcut_shift"])
        installed.handles.append(_module(model, path, recipe).register_forward_pre_hook(restore, with_kwargs=True))
    installed.handles += _watch_splits(model, installed.quantizers)
    return installed


def _hooked(module: nn.Module) -> bool:
    return any(isinstance(h, ActQuantizer) for h in module._forward_pre_hooks.values())


class SplitWatcher:
    """Forward pre-hook on a block: quantizes the q/k/v linears a wrapper split off a fused projection.

    TransformerLens's ``TransformerBridge`` replaces the block's attention (``child``) by a module that
    never calls the fused ``c_attn`` but new ``q``/``k``/``v`` linears cut from its weight (quantized
    already); the first forward after that gives them the fused layer's activation quantizer. Nothing
    happens while the original attention is in place.
    """

    def __init__(self, child: str, original: nn.Module, quantizers: dict[str, tuple[nn.Module, ActQuantizer]]):
        self.child, self.original, self.quantizers = child, original, quantizers  # path -> (linear, hook)
        self.done = False

    def __call__(self, module: nn.Module, args: tuple) -> None:
        current = getattr(module, self.child, None)
        if self.done or current is self.original or current is None:
            return
        split = [getattr(getattr(current, n, None), "original_component", None) for n in ("q", "k", "v")]
        size = sum(s.weight.numel() for s in split) if all(isinstance(s, nn.Module) for s in split) else -1
        fused = [(p, h) for p, (m, h) in self.quantizers.items() if m.weight.numel() == size and m not in split]
        if fused:  # the split linears together hold the fused projection's weight
            path, hook = fused[0]
            if hook.shift is not None:
                raise NotImplementedError(f"{path}: its OS+ input shift cannot follow the q/k/v split of "
                                          f"{type(current).__name__}; export this model with rtn or smoothquant")
            for linear in (s for s in split if not _hooked(s)):
                linear.register_forward_pre_hook(hook)
        self.done = True


def _watch_splits(model: nn.Module, quantizers: dict[str, ActQuantizer]) -> list:
    """One :class:`SplitWatcher` per (block, attention-or-MLP child) holding quantized linears."""
    groups: dict[tuple[str, str], dict] = {}
    for path, hook in quantizers.items():
        parent, _, _ = path.rpartition(".")
        block, _, child = parent.rpartition(".")
        if child:
            groups.setdefault((block, child), {})[path] = (model.get_submodule(path), hook)
    handles = []
    for (block, child), members in groups.items():
        holder = model.get_submodule(block) if block else model
        watcher = SplitWatcher(child, getattr(holder, child), members)
        handles.append(holder.register_forward_pre_hook(watcher))
    return handles


__all__ = ["FILE", "TENSORS", "ActQuantizer", "BrokenRecipe", "InstalledRecipe", "Recipe", "SplitWatcher",
           "apply_recipe", "is_quantized_folder"]
