"""The edge-circuit result of one task: faithfulness curves, CPR / CMD and the node circuit beside them.

:class:`EdgeCurves` is an :class:`interpipe.result.Result`. Its folder (owned whole, written
atomically) holds ``curves.csv`` (one row per method, seed and budget: ``edges``, ``faithfulness``
with its interval), ``summary.json`` (``info`` and the flat summary numbers) and
``edge_faithfulness.png`` (the curves; the random floor as its seeds' range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interpipe.io import read_json, write_json
from interpipe.result import Result, writing

COLUMNS = ["method", "seed", "budget", "edges", "faithfulness", "ci_low", "ci_high"]


@dataclass
class EdgeCurves(Result):
    """Curve rows (:data:`COLUMNS`), the flat summary (CPR, CMD, node-circuit comparison) and ``info``."""

    rows: list[dict[str, Any]]
    summary: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=COLUMNS)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        from interpipe.io import save_figure

        with writing(folder, overwrite) as tmp:
            self.to_frame().to_csv(tmp / "curves.csv", index=False)
            write_json(tmp / "summary.json", {"info": self.info, "summary": self.summary})
            save_figure(self.plot(), tmp / "edge_faithfulness.png")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "EdgeCurves":
        import pandas as pd

        folder = Path(folder)
        meta = read_json(folder / "summary.json")
        frame = pd.read_csv(folder / "curves.csv")
        return cls(frame.to_dict("records"), meta["summary"], meta["info"])

    def plot(self, title: str | None = None) -> Any:
        """Faithfulness against the fraction of edges (log axis), one line per method."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        frame = self.to_frame()
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for method, part in frame[frame["method"] != "random"].groupby("method", sort=False):
            if method == "node_circuit":
                ax.errorbar(part["budget"], part["faithfulness"], yerr=[part["faithfulness"] - part["ci_low"],
                            part["ci_high"] - part["faithfulness"]], fmt="k*", ms=10, label="node circuit's edges")
                continue
            line, = ax.plot(part["budget"], part["faithfulness"], "o-", label=method)
            ax.fill_between(part["budget"], part["ci_low"], part["ci_high"], color=line.get_color(), alpha=0.15)
        rand = frame[frame["method"] == "random"].groupby("budget")["faithfulness"]
        if len(rand):
            ax.fill_between(rand.mean().index, rand.min(), rand.max(), color="grey", alpha=0.3, label="random (seeds' range)")
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("circuit size (fraction of all edges)")
        ax.set_ylabel("faithfulness (MIB)")
        ax.set_title(title or self.info.get("title", "edge circuits (held-out prompts)"))
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
