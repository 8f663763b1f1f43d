"""The result of a weight-level study: flat metrics, named tables, named tensors and ``info``.

:class:`StudyResult` is the :class:`interpipe.result.Result` of the Talking Heads, bigram-subnetwork
and LayerNorm-removal studies (their subclasses set ``study`` and ``plot``). ``save`` writes into
the stage's output folder, which it shares with ``metrics.json``, ``run.json``, checkpoints and
exported models; ``result.json`` is written last and marks the folder as holding a result.
"""

from __future__ import annotations

from pathlib import Path

from interpipe.result import Result, writing


class StudyResult(Result):
    """One study's result: flat ``metrics``, named ``tables`` (DataFrames), named ``tensors`` and
    ``info`` (the run record, model, seed, settings). Subclasses set ``study`` and add ``plot()``.

    ``save(folder)`` writes ``<table>.csv``, ``tensors.safetensors`` (when there are tensors), every
    figure of ``plot()`` as ``<stem>.png`` and ``result.json`` (study, metrics, info, table names);
    ``load(folder)`` reads them back (not the figures).
    """

    study = "study"

    def __init__(self, metrics: dict, tables: dict, tensors: dict | None = None, info: dict | None = None):
        self.metrics = dict(metrics)
        self.tables = dict(tables)
        self.tensors = dict(tensors or {})
        self.info = dict(info or {})

    def to_frame(self, name: str | None = None):
        """The named table (default: the first one)."""
        if not self.tables:
            raise ValueError(f"{self.study} result has no tables")
        if name is None:
            return next(iter(self.tables.values()))
        if name not in self.tables:
            raise KeyError(f"no table {name!r}; tables: {sorted(self.tables)}")
        return self.tables[name]

    def plot(self) -> dict:
        """A dict of figures by file stem (``save`` writes each as ``<stem>.png``); subclasses override."""
        return {}

    def save(self, folder: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        """Write the tables, tensors, figures (unless ``figures=False``) and ``result.json`` into ``folder``."""
        from safetensors.torch import save_file

        from interpipe.io import save_figure, write_frame, write_json

        with writing(folder, overwrite, marker="result.json") as out:
            for name, frame in self.tables.items():
                write_frame(out / f"{name}.csv", frame)
            if self.tensors:
                save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()},
                          str(out / "tensors.safetensors"))
            if figures:
                for stem, fig in self.plot().items():
                    save_figure(fig, out / f"{stem}.png")
            write_json(out / "result.json", {"study": self.study, "metrics": self.metrics, "info": self.info,
                                             "tables": sorted(self.tables)})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "StudyResult":
        """Read a folder written by :meth:`save` (refusing another study's result)."""
        import pandas as pd
        from safetensors.torch import load_file

        from interpipe.io import read_json

        folder = Path(folder)
        meta = read_json(folder / "result.json")
        if meta.get("study") != cls.study and cls.study != "study":
            raise ValueError(f"{folder} holds a {meta.get('study')!r} result, not {cls.study!r}")
        tables = {name: pd.read_csv(folder / f"{name}.csv") for name in meta["tables"]}
        path = folder / "tensors.safetensors"
        tensors = load_file(str(path)) if path.exists() else {}
        return cls(meta["metrics"], tables, tensors, meta["info"])
