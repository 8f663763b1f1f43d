"""The quantization study on one model: outliers, then RTN / SmoothQuant / OS+ over a bits grid.

:func:`run_quantize` loads a canonical model folder, checks the settings against the model
(architecture known, every target layer able to take the weight granularity) *before*
calibrating, records outlier statistics at every quantized input, and then for every
``(method, bits)`` setting: copies the FP model, migrates it (SmoothQuant or OS+; RTN does
not), checks that the migrated FP model still equals the original, wraps the target linears
in fake quantizers, calibrates static activation ranges, and measures end metrics and per-layer
errors against the FP model. Protocol: fake quantization, weights and activations of the target
linears only (embeddings, LayerNorms, softmax and the residual stream stay FP), static ranges
from ``calib_samples`` prepared examples (min/max), migration statistics from the same examples.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from interpipe.io import OutputExistsError, read_json, save_figure, write_frame, write_json
from interpipe.quant import figures
from interpipe.quant.arch import describe_arch, input_shifts_of, install_shortcut, set_input_shift, shortcuts_of
from interpipe.quant.calibrate import calibrate, make_batches, run_batches, token_rows
from interpipe.quant.fake import specs
from interpipe.quant.layers import TokenMask, check_targets, wrap_layers
from interpipe.quant.metrics import EndMetrics, capture_outputs, headline, layer_errors
from interpipe.quant.migrate import migrate
from interpipe.quant.outliers import channel_table, summary_table
from interpipe.settings.quantize import QuantSettings, parse_bits
from interpipe.runtime import git_revision


@dataclass
class SettingResult:
    """One ``(method, bits, granularity)`` setting on one model."""

    name: str  # <model>-<method>-w<b>a<b>-<granularity>
    method: str
    bits: str
    granularity: str
    metrics: dict
    layers: pd.DataFrame  # one row per quantized linear: propagated and local MSE/SQNR
    migration: pd.DataFrame  # one row per migrated pair (empty for rtn)
    info: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.layers.assign(setting=self.name, method=self.method, bits=self.bits)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        folder = Path(folder)
        if (folder / "metrics.json").exists() and not overwrite:
            raise OutputExistsError(f"{folder} already holds a result; pass overwrite=True")
        write_frame(folder / "layers.csv", self.layers)
        if len(self.migration):
            write_frame(folder / "migration.csv", self.migration)
        write_json(folder / "info.json", self.info)
        write_json(folder / "metrics.json", self.metrics)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SettingResult":
        folder = Path(folder)
        info = read_json(folder / "info.json")
        migration = pd.read_csv(folder / "migration.csv") if (folder / "migration.csv").exists() else pd.DataFrame()
        return cls(info["name"], info["method"], info["bits"], info["granularity"], read_json(folder / "metrics.json"),
                   pd.read_csv(folder / "layers.csv"), migration, info)


@dataclass
class QuantStudyResult:
    """Every setting on one model plus the outlier analysis; ``save``/``to_frame``/``plot``."""

    model: str
    kind: str
    settings: list[SettingResult]
    outlier_summary: pd.DataFrame
    outlier_channels: pd.DataFrame
    info: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per setting: method, bits, granularity and every scalar metric."""
        return pd.DataFrame([{"setting": s.name, "method": s.method, "bits": s.bits, "granularity": s.granularity,
                              **s.metrics} for s in self.settings])

    @property
    def metrics(self) -> dict:
        """Flat metrics for the stage's ``metrics.json``: ``<method>-<bits>-<granularity>/<metric>``."""
        flat: dict = {}
        top = self.outlier_summary.sort_values("outlier_ratio", ascending=False).iloc[0]
        flat["outliers/max_ratio"] = float(top["outlier_ratio"])
        flat["outliers/max_ratio_channel"] = int(top["top_channels"].split()[0])
        if self.info.get("weights_origin"):
            flat["weights_origin"] = str(self.info["weights_origin"])  # e.g. dequantised 4-bit weights
        for s in self.settings:
            key = f"{s.method}-{s.bits}-{s.granularity}"
            flat.update({f"{key}/{k}": v for k, v in s.metrics.items() if not isinstance(v, str)})
        return flat

    def plot(self) -> dict:
        note = self.info.get("weights_origin")
        return {"end_metrics": figures.end_metrics(self.to_frame(), headline(self.kind), note),
                "layer_sqnr": figures.layer_sqnr({s.name: s.layers for s in self.settings}, note)}

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        folder = Path(folder)
        if (folder / "summary.csv").exists() and not overwrite:
            raise OutputExistsError(f"{folder} already holds a study result; pass overwrite=True")
        for s in self.settings:
            s.save(folder / s.name, overwrite=overwrite)
        write_frame(folder / "outliers" / "summary.csv", self.outlier_summary)
        write_frame(folder / "outliers" / "channels.parquet", self.outlier_channels)
        for name, fig in self.plot().items():
            save_figure(fig, folder / f"{name}.png")
        write_json(folder / "info.json", self.info)
        write_frame(folder / "summary.csv", self.to_frame())
        return folder


def _calibration_texts(data_root: str | Path, source: str, n: int) -> list[str]:
    from interpipe.data import load_task

    if source == "corpus":
        rows = load_task(data_root, "corpus", "train")
        return list(rows.select(range(min(n, len(rows))))["text"])
    rows = load_task(data_root, source, "train")
    return list(rows.select(range(min(n, len(rows))))["prompt"])


def _main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def equivalence(reference: list, migrated_model, batches, device) -> dict:
    """Max absolute (and relative to max |reference|) difference of the main output."""
    outs = run_batches(migrated_model, batches, device)
    diff, scale = 0.0, 0.0
    for ref, out, batch in zip(reference, outs, batches):
        a, b = token_rows(ref, batch.mask).double(), token_rows(_main_output(out), batch.mask).double()
        diff, scale = max(diff, float((a - b).abs().max())), max(scale, float(a.abs().max()))
    return {"equiv_max_abs_diff": diff, "equiv_rel_diff": diff / max(scale, 1e-30)}


def save_migrated(folder: Path, model, tokenizer, card, style: str, method: str) -> Path:
    """Write the migrated FP model: an HF folder plus the extras only interpipe's quantizer reads.

    Pre-LN and parallel blocks: stock ``from_pretrained`` loads it and matches the original.
    Post-LN: the vanilla class would miss the shortcut restore (``shortcuts.safetensors``); load it
    with :func:`load_migrated`. OS+ input shifts of linears behind bias-free norms
    (``input_shifts.safetensors``) cancel at full precision and matter only to the quantizer.
    """
    from safetensors.torch import save_file

    from interpipe.models import save_model_folder

    card = replace(card, name=f"{card.name}-{method}-migrated", extra={**card.extra, "migration": method,
                                                                         "block_style": style})
    save_model_folder(folder, model, tokenizer, card)
    note = {"method": method, "block_style": style,
            "load": "interpipe.quant.load_migrated" if style == "post_ln" else "transformers from_pretrained"}
    for file, tensors in (("shortcuts.safetensors", shortcuts_of(model)), ("input_shifts.safetensors", input_shifts_of(model))):
        if tensors:
            save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(folder / file))
            note[file] = "interpipe.quant.load_migrated re-applies it"
    write_json(folder / "migration.json", note)
    return folder


def load_migrated(folder: str | Path, device: str = "cpu"):
    """Load a migrated model folder (re-installing shortcut restores and input shifts); a ``LoadedModel``."""
    from safetensors.torch import load_file

    from interpipe.models import load_model

    folder = Path(folder)
    loaded = load_model(folder, device=device)
    if (folder / "shortcuts.safetensors").exists():
        tensors = load_file(str(folder / "shortcuts.safetensors"))
        for key in sorted(k for k in tensors if k.endswith(".scale")):
            module = key[: -len(".scale")]
            install_shortcut(loaded.model.get_submodule(module), tensors[key], tensors[f"{module}.shift"])
    if (folder / "input_shifts.safetensors").exists():
        for key, delta in load_file(str(folder / "input_shifts.safetensors")).items():
            set_input_shift(loaded.model.get_submodule(key[: -len(".input_shift")]), delta)
    return loaded


def _protocol(settings: QuantSettings) -> str:
    sym = lambda flag: "symmetric" if flag else "asymmetric"  # noqa: E731
    return (f"fake quantization of the inputs and weights of the target linears; layers={settings.layers}; "
            f"weights {settings.w_granularity} {sym(settings.w_symmetric)}; activations {settings.a_granularity} "
            f"{sym(settings.a_symmetric)} (min/max); residual stream, norms, softmax and embeddings in full precision")


@dataclass
class _Context:
    """What every setting of one run shares: the FP model, its references and the batches."""

    model: torch.nn.Module
    tokenizer: object
    card: object
    arch: object
    targets: list
    calib: object
    calib_batches: list
    end: EndMetrics
    fp_raw: dict
    probe: list
    fp_layers: dict
    fp_main: list
    device: object


def _run_setting(ctx: _Context, settings: QuantSettings, method: str, tag: str, out_dir: Path, info: dict) -> SettingResult:
    """Copy, migrate (not for RTN), check equivalence, fake-quantize and measure one setting."""
    w_spec, a_spec = specs(settings, tag)
    name = f"{ctx.card.name}-{method}-{tag}-{settings.granularity}"
    qmodel = copy.deepcopy(ctx.model)
    metrics: dict = {"w_bits": parse_bits(tag)[0], "a_bits": parse_bits(tag)[1]}
    if "weights_origin" in ctx.card.extra:
        metrics["weights_origin"] = str(ctx.card.extra["weights_origin"])
    migration = pd.DataFrame()
    if method != "rtn":
        done = migrate(qmodel, ctx.arch, ctx.calib, method, w_spec, a_spec, settings.alpha, settings.osplus_steps,
                       settings.osplus_min_ratio, settings.osplus_samples)
        migration = pd.DataFrame([m.row() for m in done])
        metrics.update(equivalence(ctx.fp_main, qmodel, ctx.probe, ctx.device))
        if settings.save_migrated:
            save_migrated(out_dir / name / "migrated", qmodel, ctx.tokenizer, ctx.card, ctx.arch.style, method)
    tokens = TokenMask()
    layers = wrap_layers(qmodel, ctx.targets, w_spec, a_spec, tokens)
    if a_spec.static:
        for layer in layers.values():
            layer.set_mode("observe")
        run_batches(qmodel, ctx.calib_batches, ctx.device, tokens)
    for layer in layers.values():
        layer.set_mode("quant")
    metrics.update(ctx.end.compare(ctx.fp_raw, ctx.end.measure(qmodel, tokens)))
    for layer in layers.values():
        layer.track_error = True
    modules = [t.module for t in ctx.targets]
    layer_frame = pd.DataFrame(layer_errors(ctx.fp_layers, capture_outputs(qmodel, modules, ctx.probe, ctx.device, tokens),
                                            layers))
    metrics["sqnr_mean_db"] = float(layer_frame["sqnr_db"].mean())
    metrics["sqnr_min_db"] = float(layer_frame["sqnr_db"].min())
    metrics["local_sqnr_min_db"] = float(layer_frame["local_sqnr_db"].min())
    return SettingResult(name, method, tag, settings.granularity, metrics, layer_frame, migration,
                         {**info, "name": name, "method": method, "bits": tag, "granularity": settings.granularity})


def _prepare(settings: QuantSettings, model_folder, data_root, device: str, dtype: str) -> _Context:
    """Load, check (before calibrating), calibrate and measure the FP references."""
    from interpipe.models import load_model
    from interpipe.runtime import resolve_device

    dev = resolve_device(device)
    loaded = load_model(model_folder, device=str(dev), dtype=dtype)
    model, tokenizer, card = loaded.model, loaded.tokenizer, loaded.card
    arch = describe_arch(model)  # an undescribed architecture fails here, naming its model_type
    targets = [t for t in arch.targets if t.kind in settings.layers]
    if not targets:
        raise ValueError(f"quantize.layers={settings.layers} selects no layer of {card.name} "
                         f"(it has {sorted({t.kind for t in arch.targets})})")
    for tag in settings.bits:
        check_targets(model, targets, specs(settings, tag)[0])  # group size etc.: fails before calibration
    texts = _calibration_texts(data_root, settings.calib_source, settings.calib_samples)
    calib_batches = make_batches(tokenizer, texts, settings.max_length, settings.batch_size)
    calib = calibrate(model, arch, calib_batches, dev, settings.top_k, keep_pair_inputs="osplus" in settings.methods)
    end = EndMetrics(card.kind, tokenizer, data_root, settings.eval_samples, settings.max_length, settings.batch_size, dev)
    probe = end.probe_batches(settings.probe_samples)
    return _Context(model, tokenizer, card, arch, targets, calib, calib_batches, end, end.measure(model), probe,
                    capture_outputs(model, [t.module for t in targets], probe, dev),
                    [_main_output(o) for o in run_batches(model, probe, dev)], dev)


def run_quantize(settings: QuantSettings, model_folder: str | Path, data_root: str | Path, out_dir: str | Path,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0) -> QuantStudyResult:
    """Run the whole grid of ``settings`` on one model folder and write it under ``out_dir``."""
    out_dir = Path(out_dir)
    ctx = _prepare(settings, model_folder, data_root, device, dtype)
    card, arch, calib = ctx.card, ctx.arch, ctx.calib
    config_hash = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]
    info = {"model": card.name, "source": card.source, "kind": card.kind, "architecture": card.architecture,
            "model_type": arch.spec.model_type, "block_style": arch.style, "norm_kind": arch.spec.norm_kind,
            "weights_origin": card.extra.get("weights_origin"), "seed": seed, "config_hash": config_hash,
            "git_revision": git_revision(),
            "calibration": {"source": settings.calib_source, "examples": calib.n_examples, "tokens": calib.n_tokens},
            "protocol": _protocol(settings), "skipped_tasks": ctx.end.skipped, "settings": asdict(settings)}
    results = [_run_setting(ctx, settings, method, tag, out_dir, info)
               for method, tag in tqdm(settings.grid(), desc=f"quantize {card.name}")]
    study = QuantStudyResult(card.name, card.kind, results, summary_table(calib, settings.top_k), channel_table(calib), info)
    study.save(out_dir, overwrite=True)
    save_figure(figures.outlier_channels(calib, study.outlier_summary), out_dir / "outliers" / "channels.png")
    save_figure(figures.outlier_summary(study.outlier_summary), out_dir / "outliers" / "summary.png")
    return study
