"""The quantization study on one model: outliers, then RTN / SmoothQuant / OS+ over bits and seeds.

:func:`run_quantize` loads a canonical model folder, checks the settings against the model
(architecture known, every target layer able to take the weight granularity) *before*
calibrating, and measures the full-precision references. Then, per calibration seed, it draws
``calib_samples`` training texts, records per-channel statistics at every quantized input (the
outlier analysis uses the first seed) and, for every ``(method, bits)`` setting: copies the FP
model, migrates it (SmoothQuant, OS+ or an OS+ ablation) or rotates it (QuaRot, then recalibrates),
wraps the target linears in fake quantizers (GPTQ's weights for the GPTQ methods, LLM.int8()'s
decomposition for ``llmint8``) whose static ranges the observer derives from the calibration pass, and
measures end metrics against the FP model, keeping each held-out example's values for the intervals
(:mod:`~interpipe.quant.resample`). The first seed also checks that the migrated or rotated FP
model equals the original and measures per-layer errors. Protocol: fake quantization of the weights
and inputs of the target linears only (embeddings, norms, softmax and the residual stream stay FP);
the grid per bit width comes from ``QuantSettings.protocol`` (OS+'s by default). Each setting named
in ``QuantSettings.export`` is also written, at the first seed, as a model folder
``<export_root>/<model>-<method>-<bits>`` that every study loads like any model (:mod:`~interpipe.quant.recipe`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interpipe.io import save_figure
from interpipe.quant import figures
from interpipe.quant.arch import describe_arch
from interpipe.quant.calibrate import Calibration, calibrate, make_batches, run_batches, token_rows
from interpipe.quant.export import load_migrated, save_migrated, save_quantized
from interpipe.quant.fake import ActSpec, WeightSpec
from interpipe.quant.fake import specs as protocol_specs
from interpipe.quant.gptq import gptq_layers
from interpipe.quant.int8 import act_grid, weight_grid
from interpipe.quant.layers import TokenMask, check_targets, wrap_layers
from interpipe.quant.metrics import EndMetrics, capture_outputs, layer_errors
from interpipe.quant.migrate import Migration, SearchGrid, migrate
from interpipe.quant.observers import static_range
from interpipe.quant.outliers import channel_table, delimiter_ids, summary_table, token_summary
from interpipe.quant.recipe import Recipe
from interpipe.quant.resample import Examples
from interpipe.quant.rotate import Rotation, check_rotatable, rotate
from interpipe.quant.results import QuantStudyResult, SettingResult, aggregate_seeds
from interpipe.runtime import git_revision
from interpipe.settings.quantize import (DECOMPOSED, GPTQ_METHODS, MIGRATIONS, ROTATIONS, WEIGHT_METHODS, QuantSettings,
                                         parse_bits)

__all__ = ["QuantStudyResult", "SettingResult", "load_migrated", "run_quantize", "save_migrated"]


def calibration_texts(data_root: str | Path, source: str, n: int, seed: int) -> list[str]:
    """``n`` training texts drawn without replacement by ``seed`` (the train split is ordered by task)."""
    from interpipe.data import load_task

    rows = load_task(data_root, source, "train")
    idx = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return list(rows.select(sorted(int(i) for i in idx))["text" if source == "corpus" else "prompt"])


def specs(settings: QuantSettings, tag: str, method: str | None = None) -> tuple[WeightSpec, ActSpec]:
    """The weight and activation grids at bits ``tag`` (``w8a8``) for ``method``: the protocol's (with the
    ``act_granularity`` override, :func:`~interpipe.quant.fake.specs`), or LLM.int8()'s vector-wise grids."""
    if method not in DECOMPOSED:
        return protocol_specs(settings, tag)
    w, a = parse_bits(tag)
    return weight_grid(w), act_grid(a)


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


def _protocol(settings: QuantSettings) -> dict:
    sym = lambda flag: "symmetric" if flag else "asymmetric"  # noqa: E731
    grids = {tag: (f"weights {g.w_granularity} {sym(g.w_symmetric)}; activations {g.a_granularity} "
                   f"{sym(g.a_symmetric)}") for tag in settings.bits for g in [settings.grid_of(tag)]}
    notes = {"llmint8": f"LLM.int8(): vector-wise symmetric grids (weights per output row, activations per "
                        f"token), input dimensions with any |x| > {settings.int8_threshold:g} in an example kept in "
                        "full precision",
             "gptq": f"GPTQ weights on the grid above (block {settings.gptq_block_size}, percdamp "
                     f"{settings.gptq_percdamp:g}; Hessians from the full-precision calibration pass), "
                     "activations as rtn",
             "quarot": "QuaRot: norms folded, residual stream rotated by a random Hadamard (seed = calibration "
                       "seed), online Hadamard before the down projection; then rtn on the rotated model "
                       "(ranges recalibrated)",
             "quarot_gptq": "the quarot rotation, then GPTQ weights with Hessians of the rotated model's inputs"}
    return {"name": settings.protocol, "grids": grids, "observer": settings.observer, "layers": list(settings.layers),
            "methods": {m: notes[m] for m in settings.methods if m in notes},
            "note": "fake quantization of the inputs and weights of the target linears; 16 bits = not quantized; "
                    "residual stream, norms, softmax and embeddings in full precision"}


@dataclass
class _Context:
    """What every setting of one run shares: the FP model, its references and the evaluation batches."""

    model: torch.nn.Module
    tokenizer: object
    card: object
    arch: object
    targets: list
    end: EndMetrics
    fp_raw: dict
    probe: list
    fp_layers: dict
    fp_main: list
    device: object
    export_root: Path | None = None  # where exported quantized model folders go


def _set_ranges(layers: dict, ctx: _Context, calib: Calibration, settings: QuantSettings, done: list) -> None:
    """Static ranges of every wrapped layer from the calibration pass (migrated inputs transformed)."""
    moved = {m.pair.hook: (m.shift, m.scale) for m in done}
    for target in ctx.targets:
        layer = layers[target.module]
        if not layer.a_spec.static:
            continue
        ex_min, ex_max = calib.stats[target.hook].example_ranges()
        shift, scale = moved.get(target.hook, (None, None))
        layer.set_range(*static_range(ex_min, ex_max, settings.observer, layer.a_spec.per_channel, shift, scale))


def _migrate_setting(ctx: _Context, calib: Calibration, settings: QuantSettings, method: str, tag: str, qmodel,
                     metrics: dict, first: bool, out_dir: Path) -> Migration:
    """Migrate ``qmodel`` in place (SmoothQuant, OS+ and its ablations; nothing for the other methods); the
    first seed also checks the migrated FP model against the original and may save it."""
    if method not in MIGRATIONS:
        return Migration()
    w_spec, a_spec = specs(settings, tag, method)
    grid = SearchGrid(settings.osplus_steps, settings.osplus_step, settings.osplus_t_min)
    migration = migrate(qmodel, ctx.arch, calib, method, w_spec, a_spec, settings.alpha, grid,
                        settings.osplus_samples or None, settings.observer)
    if first:
        metrics.update(equivalence(ctx.fp_main, qmodel, ctx.probe, ctx.device))
        if settings.save_migrated:
            name = f"{ctx.card.name}-{method}-{tag}-{settings.tag_of(tag, method)}"
            save_migrated(out_dir / name / "migrated", qmodel, migration, ctx.tokenizer, ctx.card, ctx.arch.style,
                          method)
    return migration


def _rotate_setting(ctx: _Context, calib: Calibration, settings: QuantSettings, method: str, qmodel, metrics: dict,
                    first: bool, seed: int) -> tuple[Calibration, Rotation]:
    """Rotate ``qmodel`` in place (QuaRot, by the calibration seed), check the rotated FP model against the
    original (first seed), and calibrate the rotated model (its inputs are no longer the original's)."""
    rotation = rotate(qmodel, ctx.arch.spec, seed)
    if first:
        metrics.update(equivalence(ctx.fp_main, qmodel, ctx.probe, ctx.device))
    rotated = calibrate(qmodel, ctx.arch, calib.batches, ctx.device, settings.top_k,
                        keep_hessians=method in GPTQ_METHODS)
    rotation.remove()  # installed again on the wrapped linears
    return rotated, rotation


def _quantize_setting(ctx: _Context, calib: Calibration, settings: QuantSettings, method: str, tag: str, qmodel,
                      migration: Migration, rotation: Rotation | None = None) -> tuple[dict, TokenMask]:  # layers
    """Wrap the targets of ``qmodel`` in fake quantizers: GPTQ's weights for ``gptq``/``quarot_gptq``,
    LLM.int8()'s decomposition for ``llmint8``, a rotation's online Hadamards, static ranges from the
    calibration pass where the grid needs them."""
    w_spec, a_spec = specs(settings, tag, method)
    tokens = TokenMask()
    threshold = settings.int8_threshold if method in DECOMPOSED else None
    layers = wrap_layers(qmodel, ctx.targets, w_spec, a_spec, tokens, input_shifts=migration.input_shifts,
                         threshold=threshold)
    if rotation is not None:
        rotation.install(qmodel)  # on the wrappers: their quantizers see z H
    if method in GPTQ_METHODS:
        gptq_layers(layers, {t.module: t.hook for t in ctx.targets}, calib.hessians, settings.gptq_block_size,
                    settings.gptq_percdamp)
    _set_ranges(layers, ctx, calib, settings, migration.pairs)
    for layer in layers.values():
        layer.set_mode("quant")
    return layers, tokens


ROTATED_BASIS = ("the residual stream is h Q (Q: a random Hadamard rotation drawn by calib_seed, the recipe's "
                 "rotation.residual): heads' and MLPs' outputs are rotated consistently, so head-level patching and "
                 "ablation compare with the FP model directly; residual directions (DLA per direction, probes, "
                 "channel-level readings of the stream) are in the rotated basis: rotate them back with Q^T")


def _export(ctx: _Context, settings: QuantSettings, method: str, tag: str, seed: int, qmodel, layers: dict,
            migration: Migration, rotation: Rotation | None) -> None:
    """Write one setting (first seed) as a model folder ``<export_root>/<model>-<method>-<bits>``."""
    w_spec, a_spec = specs(settings, tag, method)
    recipe = Recipe(method, tag, settings.protocol, asdict(w_spec), asdict(a_spec), [], ctx.card.name, seed,
                    threshold=settings.int8_threshold if method in DECOMPOSED else None,
                    rotation={"seed": seed, "basis": ROTATED_BASIS} if rotation is not None else None)
    save_quantized(ctx.export_root / f"{ctx.card.name}-{method}-{tag}", qmodel, layers, ctx.tokenizer, ctx.card,
                   recipe, migration, rotation)


def _run_setting(ctx: _Context, calib: Calibration, settings: QuantSettings, method: str, tag: str, seed: int,
                 first: bool, out_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Copy, migrate (the migrations only), fake-quantize and measure one setting at one calibration seed:
    its metrics, per-layer errors (first seed), migration table and per-example values."""
    qmodel = copy.deepcopy(ctx.model)
    metrics: dict = {"calib_seed": seed, "w_bits": parse_bits(tag)[0], "a_bits": parse_bits(tag)[1]}
    if "weights_origin" in ctx.card.extra:
        metrics["weights_origin"] = str(ctx.card.extra["weights_origin"])
    migration, rotation = _migrate_setting(ctx, calib, settings, method, tag, qmodel, metrics, first, out_dir), None
    if method in ROTATIONS:
        calib, rotation = _rotate_setting(ctx, calib, settings, method, qmodel, metrics, first, seed)
    layers, tokens = _quantize_setting(ctx, calib, settings, method, tag, qmodel, migration, rotation)
    q_raw = ctx.end.measure(qmodel, tokens)
    metrics.update(ctx.end.compare(ctx.fp_raw, q_raw))
    examples = ctx.end.examples(ctx.fp_raw, q_raw).assign(calib_seed=seed)  # per held-out example (intervals)
    if method in DECOMPOSED:  # over the held-out forwards just measured
        shares = [layer.decomposed_share for layer in layers.values()]
        metrics["decomposed_share_mean"], metrics["decomposed_share_max"] = float(np.mean(shares)), float(max(shares))
    layer_frame = pd.DataFrame()
    if first:
        for layer in layers.values():
            layer.track_error = True
        quantized = capture_outputs(qmodel, [t.module for t in ctx.targets], ctx.probe, ctx.device, tokens)
        quantized = rotation.unrotate(quantized) if rotation is not None else quantized  # the FP model's basis
        layer_frame = pd.DataFrame(layer_errors(ctx.fp_layers, quantized, layers))
        metrics["sqnr_mean_db"] = float(layer_frame["sqnr_db"].mean())
        metrics["sqnr_min_db"] = float(layer_frame["sqnr_db"].min())
        metrics["local_sqnr_min_db"] = float(layer_frame["local_sqnr_db"].min())
    if first and f"{method}-{tag}" in settings.export:  # last: unwraps qmodel in place
        _export(ctx, settings, method, tag, seed, qmodel, layers, migration, rotation)
    return metrics, layer_frame, pd.DataFrame([m.row() for m in migration.pairs]), examples


def _aggregate(runs: dict, settings: QuantSettings, model: str, info: dict) -> list[SettingResult]:
    """One :class:`SettingResult` per setting: seed means, intervals over seeds and examples, and the paired
    differences to RTN (and, for OS+ and its ablations, SmoothQuant) at the same bits."""
    frames = {key: pd.concat([e for *_, e in per_seed], ignore_index=True) for key, per_seed in runs.items()}
    examples = {key: Examples.of(frame) for key, frame in frames.items()}  # arrays, replicates cached
    results = []
    for (method, tag), per_seed in runs.items():
        metrics = [m for m, *_ in per_seed]
        bases = {b: ([m for m, *_ in runs[(b, tag)]], examples[(b, tag)])
                 for b in ("rtn", "smoothquant") if (b, tag) in runs and method != b
                 and (b == "rtn" or method.startswith("osplus"))}
        name = f"{model}-{method}-{tag}-{settings.tag_of(tag, method)}"
        results.append(SettingResult(name, method, tag, settings.tag_of(tag, method),
                                     aggregate_seeds(metrics, None, {b: v[0] for b, v in bases.items()},
                                                     examples[(method, tag)], {b: v[1] for b, v in bases.items()}),
                                     per_seed[0][1], per_seed[0][2], pd.DataFrame(metrics),
                                     {**info, "name": name, "method": method, "bits": tag,
                                      "granularity": settings.tag_of(tag, method)}, frames[(method, tag)]))
    return results


def _prepare(settings: QuantSettings, model_folder, data_root, device: str, dtype: str) -> _Context:
    """Load, check (before calibrating) and measure the FP references."""
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
    if any(m in ROTATIONS for m in settings.methods):
        check_rotatable(arch.spec)  # an unrotatable family fails here, naming what it lacks
    end = EndMetrics(card.kind, tokenizer, data_root, settings.eval_samples, settings.max_length, settings.batch_size, dev)
    probe = end.probe_batches(settings.probe_samples)
    fp_main: list = []
    fp_layers = capture_outputs(model, [t.module for t in targets], probe, dev, outputs=fp_main)
    return _Context(model, tokenizer, card, arch, targets, end, end.measure(model), probe, fp_layers,
                    [_main_output(o) for o in fp_main], dev)


def run_quantize(settings: QuantSettings, model_folder: str | Path, data_root: str | Path, out_dir: str | Path,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 export_root: str | Path | None = None, info: dict | None = None) -> QuantStudyResult:
    """Run the whole grid of ``settings`` on one model folder and write it under ``out_dir``.

    The ``settings.export`` model folders go under ``export_root`` (default ``out_dir/models``).
    ``info`` (the run record: model origin, seed, config hash, revision) joins every result's info.
    """
    out_dir = Path(out_dir)
    ctx = _prepare(settings, model_folder, data_root, device, dtype)
    ctx.export_root = Path(export_root) if export_root is not None else out_dir / "models"
    card, arch = ctx.card, ctx.arch
    keep = any(m.startswith("osplus") for m in settings.methods)
    runs: dict[tuple[str, str], list] = {key: [] for key in settings.grid()}
    first_calib = None
    jobs = [(s, m, b) for s in settings.calib_seeds for m, b in settings.grid() if s in settings.seeds_of(b)]
    bar = tqdm(total=len(jobs), desc=f"quantize {card.name}")
    for calib_seed in settings.calib_seeds:
        texts = calibration_texts(data_root, settings.calib_source, settings.calib_samples, calib_seed)
        batches = make_batches(ctx.tokenizer, texts, settings.max_length, settings.batch_size)
        calib = calibrate(ctx.model, arch, batches, ctx.device, settings.top_k, keep_pair_inputs=keep,
                          keep_hessians=any(m in WEIGHT_METHODS for m in settings.methods))
        first = first_calib is None
        first_calib = calib if first else first_calib
        for _, method, tag in (j for j in jobs if j[0] == calib_seed):
            runs[(method, tag)].append(_run_setting(ctx, calib, settings, method, tag, calib_seed, first, out_dir))
            bar.update()
        del calib
    bar.close()
    settings_hash = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]
    record = info or {}
    info = {"model": card.name, "source": card.source, "kind": card.kind, "architecture": card.architecture,
            "model_type": arch.spec.model_type, "block_style": arch.style, "norm_kind": arch.spec.norm_kind,
            "weights_origin": card.extra.get("weights_origin"), "seed": seed, "settings_hash": settings_hash,
            "git_revision": git_revision(),
            "calibration": {"source": settings.calib_source, "examples": first_calib.n_examples,
                            "seeds": list(settings.calib_seeds)},
            "protocol": _protocol(settings), "skipped_tasks": ctx.end.skipped, "settings": asdict(settings), **record}
    results = _aggregate(runs, settings, card.name, info)
    tokens = token_summary(first_calib, delimiter_ids(ctx.tokenizer, torch.cat([b.input_ids.reshape(-1)
                                                                                  for b in first_calib.batches])))
    study = QuantStudyResult(card.name, card.kind, results, summary_table(first_calib, settings.top_k),
                             channel_table(first_calib), tokens, info)
    study.save(out_dir, overwrite=True)
    save_figure(figures.outlier_channels(first_calib, study.outlier_summary), out_dir / "outliers" / "channels.png")
    save_figure(figures.outlier_summary(study.outlier_summary), out_dir / "outliers" / "summary.png")
    if len(tokens):
        save_figure(figures.massive_activations(tokens, info["weights_origin"]), out_dir / "headline_massive_activations.png")
    return study
