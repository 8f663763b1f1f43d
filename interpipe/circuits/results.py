"""One result object per analysis call: a grid of effects with axis names, labels and provenance.

:class:`CircuitResult` holds the values of one analysis (a patching grid, attribution estimates,
DLA contributions, ablation effects), the names of its axes (``layer``, ``head``, ``pos``,
``component``, ...), optional tick labels, the metric value of the unpatched run (``baseline``)
and ``info`` (model, task, settings; ``info["method"]`` and ``info["direction"]`` say how the
values were obtained). It is an :class:`interpipe.result.Result`. Verbs: :meth:`effect`, :meth:`save`
(``values.safetensors`` + ``result.json``, the whole folder at once, refusing to overwrite unless
asked), :meth:`load`, :meth:`to_frame` (long form with the columns
``analysis, method, direction, layer, head, position, effect, value``) and :meth:`plot` (one heatmap figure).

``method`` is one of :data:`METHODS` (``exact`` activation patching, ``attribution`` patching,
``path`` patching, ``ablation``, ``dla``, ``logit_lens``); ``direction`` is ``denoising`` (clean
into corrupted), ``noising`` (corrupted into clean), or for analyses that patch nothing the kind
of run (``mean``/``zero``/``resample`` ablation, ``clean`` for DLA and the logit lens).

>>> import torch
>>> r = CircuitResult("demo", torch.tensor([[0.5, 0.0]]), ("layer", "head"), baseline=0.0,
...                   info={"method": "exact", "direction": "denoising"})
>>> r.to_frame()[["method", "direction", "layer", "head", "effect"]].values.tolist()
[['exact', 'denoising', 0, 0, 0.5], ['exact', 'denoising', 0, 1, 0.0]]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from interpipe.io import read_json, write_json
from interpipe.result import Result, writing
from interpipe.typing import Float, Tensor

# axis -> frame column; a key/value head (grouped-query k/v grids, analysis ``k_kv_head``) goes in ``head``
AXIS_COLUMNS = {"layer": "layer", "head": "head", "kv_head": "head", "pos": "position"}
METHODS = ("exact", "attribution", "path", "ablation", "dla", "logit_lens")  # the ``method`` column
DIRECTION_NAMES = {"denoise": "denoising", "noise": "noising"}  # patching direction -> ``direction`` column


@dataclass
class CircuitResult(Result):
    """The values of one analysis over named axes; ``effect = values - baseline``."""

    name: str
    values: Float[Tensor, "..."]
    axes: tuple[str, ...]
    labels: dict[str, list[str]] = field(default_factory=dict)
    baseline: float = 0.0  # metric of the run being patched (0 = corrupted, 1 = clean when normalised)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = self.values.detach().float().cpu()
        self.axes = tuple(self.axes)
        if self.values.ndim != len(self.axes):
            raise ValueError(f"{self.name}: values have {self.values.ndim} dims but axes are {self.axes}")

    def effect(self) -> Float[Tensor, "..."]:
        """Change of the metric caused by each intervention."""
        return self.values - self.baseline

    def to_frame(self) -> Any:
        """Long table: one row per cell with ``layer, head, position`` (−1 where not an axis), ``effect``, ``value``."""
        import pandas as pd

        effect = self.effect()
        rows = []
        for cell in itertools.product(*(range(n) for n in self.values.shape)):
            row: dict[str, Any] = {"layer": self.info.get("layer", -1) if "layer" not in self.axes else -1,
                                   "head": -1, "position": -1}  # one-layer results (neurons) name it in info
            for axis, i in zip(self.axes, cell):
                row[AXIS_COLUMNS.get(axis, axis)] = i
                if axis == "component" and "component_layer" in self.info:
                    row["layer"], row["head"] = self.info["component_layer"][i], self.info["component_head"][i]
                if axis in self.labels and axis not in AXIS_COLUMNS:
                    row[axis] = self.labels[axis][i]
            row["effect"] = float(effect[cell])
            row["value"] = float(self.values[cell])
            rows.append(row)
        frame = pd.DataFrame(rows)
        for column in ("layer", "head", "position"):
            frame[column] = frame[column].astype(int)
        frame.insert(0, "analysis", self.name)
        frame.insert(1, "method", str(self.info.get("method", "")))
        direction = str(self.info.get("direction", ""))
        frame.insert(2, "direction", DIRECTION_NAMES.get(direction, direction))
        return frame

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``values.safetensors`` and ``result.json`` into ``folder`` atomically."""
        from safetensors.torch import save_file

        with writing(folder, overwrite) as tmp:  # the result owns the folder: written whole, then renamed
            save_file({"values": self.values.contiguous()}, str(tmp / "values.safetensors"))
            write_json(tmp / "result.json", {"name": self.name, "axes": list(self.axes), "labels": self.labels,
                                             "baseline": self.baseline, "info": self.info})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "CircuitResult":
        """Read a folder written by :meth:`save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = read_json(folder / "result.json")
        values = load_file(str(folder / "values.safetensors"))["values"]
        return cls(meta["name"], values, tuple(meta["axes"]), meta["labels"], meta["baseline"], meta["info"])

    def plot(self, title: str | None = None, ax: Any = None) -> Any:
        """Heatmap of the effect (2-D grids; 3-D grids are summed over their last axis). Returns the figure."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grid = self.effect()
        axes = list(self.axes)
        while grid.ndim > 2:
            grid, axes = grid.sum(-1), axes[:-1]
        if grid.ndim == 1:
            grid, axes = grid[:, None], [axes[0], ""]
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * grid.shape[1] + 2), max(3.0, 0.35 * grid.shape[0] + 1.5)))
        else:
            fig = ax.figure
        vmax = float(grid.abs().max()) or 1.0
        image = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_ylabel(axes[0])
        ax.set_xlabel(axes[1])
        ax.set_yticks(range(grid.shape[0]), self.labels.get(axes[0], [str(i) for i in range(grid.shape[0])])[: grid.shape[0]],
                      fontsize=7)
        if axes[1] in self.labels and len(self.labels[axes[1]]) == grid.shape[1]:
            ax.set_xticks(range(grid.shape[1]), self.labels[axes[1]], rotation=90, fontsize=7)
        elif grid.shape[1] <= 32:
            ax.set_xticks(range(grid.shape[1]))
        ax.set_title(title or self.name)
        fig.colorbar(image, ax=ax, label="effect")
        return fig
