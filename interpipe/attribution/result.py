"""The result of one attribution call: scores per input token, with the inputs and targets.

An :class:`interpipe.result.Result`: ``save`` writes ``attribution.json`` and ``attributions.parquet``,
``plot`` returns one figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from interpipe.result import Result, writing
from interpipe.typing import Float, Int, Tensor


@dataclass
class Attribution(Result):
    """Token scores of one method on one batch.

    ``scores[b, i]`` is the importance of input token ``i`` of example ``b`` for the output
    ``target_ids[b]`` read at ``score_pos[b]``; padding positions hold 0 and are dropped by
    :meth:`to_frame`. ``layer_scores[l, b, i]`` (optional) is the same score computed from
    layer ``l``'s hidden states (``l = 0`` is the embedding output).
    """

    method: str
    scores: Float[Tensor, "batch pos"]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    target_ids: Int[Tensor, "batch"]
    example_ids: list[str]
    tokens: list[list[str]]
    layer_scores: Float[Tensor, "layer batch pos"] | None = None
    seconds: float = 0.0  # attribution time only (evaluation excluded)
    info: dict = field(default_factory=dict)  # model, seed, settings, git revision
    diagnostics: dict = field(default_factory=dict)  # per-example lists (IG: completeness gap, steps used)

    def __len__(self) -> int:
        return len(self.example_ids)

    @classmethod
    def concat(cls, parts: list["Attribution"]) -> "Attribution":
        """Join the results of several batches of the same method (re-padding to one width)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        width = max(p.input_ids.shape[1] for p in parts)
        pad = lambda x, w=width: torch.nn.functional.pad(x, (0, w - x.shape[-1]))  # noqa: E731  (..., pos) -> (..., width)
        layers = None
        if parts[0].layer_scores is not None:
            layers = torch.cat([pad(p.layer_scores) for p in parts], dim=1)  # (layer, batch, pos)
        return cls(method=parts[0].method, scores=torch.cat([pad(p.scores) for p in parts]),
                   input_ids=torch.cat([pad(p.input_ids) for p in parts]),
                   attention_mask=torch.cat([pad(p.attention_mask) for p in parts]),
                   target_ids=torch.cat([p.target_ids for p in parts]),
                   example_ids=[e for p in parts for e in p.example_ids], tokens=[t for p in parts for t in p.tokens],
                   layer_scores=layers, seconds=sum(p.seconds for p in parts), info=dict(parts[0].info),
                   diagnostics={k: [v for p in parts for v in p.diagnostics.get(k, [])] for k in parts[0].diagnostics})

    def nonfinite_examples(self) -> list[str]:
        """Example ids whose scores (at real tokens) contain NaN or Inf."""
        real = self.attention_mask.bool()
        bad = (~torch.isfinite(self.scores) & real).any(1)
        if self.layer_scores is not None:
            bad |= (~torch.isfinite(self.layer_scores) & real).any(2).any(0)
        return [self.example_ids[i] for i in torch.nonzero(bad).flatten().tolist()]

    def check_finite(self) -> None:
        """Raise ``ValueError`` naming the examples with NaN/Inf scores."""
        bad = self.nonfinite_examples()
        if bad:
            raise ValueError(f"{self.method}: non-finite attribution scores for {len(bad)} examples: {bad[:10]}")

    def to_frame(self):
        """One row per example: ``example_id, input_ids, tokens, target_id, scores`` (+ ``layer_scores``)."""
        import pandas as pd

        lengths = self.attention_mask.sum(1).tolist()
        rows = []
        for b, n in enumerate(lengths):
            row = {"example_id": self.example_ids[b], "input_ids": self.input_ids[b, :n].tolist(),
                   "tokens": list(self.tokens[b][:n]), "target_id": int(self.target_ids[b]),
                   "scores": self.scores[b, :n].double().tolist()}
            if self.layer_scores is not None:
                row["layer_scores"] = self.layer_scores[:, b, :n].double().tolist()
            rows.append(row)
        return pd.DataFrame(rows)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``attribution.json`` and ``attributions.parquet`` (the marker) into ``folder``, refusing NaN/Inf.

        The folder is shared: the attribute stage adds its evaluation tables beside them.
        """
        from interpipe.io import write_frame, write_json

        with writing(folder, overwrite, marker="attributions.parquet") as out:
            self.check_finite()
            write_json(out / "attribution.json", {"method": self.method, "seconds": self.seconds, "info": self.info,
                                                  "diagnostics": self.diagnostics})
            write_frame(out / "attributions.parquet", self.to_frame())
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "Attribution":
        """Read a folder written by :meth:`save`."""
        import pandas as pd

        from interpipe.io import read_json

        folder = Path(folder)
        meta = read_json(folder / "attribution.json")
        frame = pd.read_parquet(folder / "attributions.parquet")
        n, width = len(frame), max(len(ids) for ids in frame["input_ids"])
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        scores = torch.zeros((n, width))
        layers = None
        if "layer_scores" in frame:
            n_layers = len(frame["layer_scores"].iloc[0])
            layers = torch.zeros((n_layers, n, width))
        for b, row in enumerate(frame.itertuples()):
            k = len(row.input_ids)
            ids[b, :k] = torch.tensor(list(row.input_ids))
            mask[b, :k] = 1
            scores[b, :k] = torch.tensor(list(row.scores), dtype=torch.float32)
            if layers is not None:
                layers[:, b, :k] = torch.tensor([list(x) for x in row.layer_scores], dtype=torch.float32)
        return cls(method=meta["method"], scores=scores, input_ids=ids, attention_mask=mask,
                   target_ids=torch.tensor(frame["target_id"].tolist()), example_ids=frame["example_id"].tolist(),
                   tokens=[list(t) for t in frame["tokens"]], layer_scores=layers, seconds=meta["seconds"],
                   info=meta["info"], diagnostics=meta.get("diagnostics", {}))

    def plot(self, indices: list[int] | None = None, max_examples: int = 4):
        """One figure: a token heatmap (one row per example, scores normalised by each row's max |score|)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        indices = list(range(min(max_examples, len(self)))) if indices is None else list(indices)
        lengths = self.attention_mask.sum(1).tolist()
        width = max(lengths[i] for i in indices)
        fig, axes = plt.subplots(len(indices), 1, figsize=(max(6.0, 0.55 * width), 1.5 * len(indices) + 0.6),
                                 squeeze=False)
        for ax, b in zip(axes[:, 0], indices):
            n = lengths[b]
            row = self.scores[b, :n].float()
            scale = row.abs().max().item() or 1.0
            ax.imshow((row / scale)[None, :].numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            ax.set_xticks(range(n), [t.replace("Ġ", "") for t in self.tokens[b][:n]], rotation=60, fontsize=7)
            ax.set_yticks([])
            ax.set_title(f"{self.example_ids[b]}  target={int(self.target_ids[b])}", fontsize=8, loc="left")
        fig.suptitle(f"{self.method} (red = supports the target)", fontsize=9)
        fig.subplots_adjust(hspace=1.8)
        return fig

