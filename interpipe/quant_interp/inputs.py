"""The inputs of the study: which (FP, quantized) pairs, where their results lie, and reading them back.

Every model of a pair has a model folder (``<models>/<name>/``), the circuits stage's results
(``<circuits>/<name>/<name>-<task>/``: ``metrics.json``, ``effects.parquet``, ``ioi_heads.csv`` and,
for a solved task, ``circuit.json``; the run's resolved config in ``<circuits>/<name>/.hydra/``) and
the attribute stage's (``<attribute>/<name>/<method>/attributions.parquet``, ``per_example.csv``).
:func:`check_inputs` finds every missing folder or file before any model loads and names the DVC
stage that makes it.

>>> Pair("toy", "toy-rtn-w6a6").setting
('rtn', 'w6a6')
>>> Pair("toy", "toy").setting
('fp', '')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from interpipe.components import Component, heads_of
from interpipe.io import read_json
from interpipe.settings.circuits import CircuitSettings
from interpipe.settings.quant_interp import QuantInterpSettings

_SETTING = re.compile(r"^(?P<method>.+?)-(?P<bits>w\d+a\d+)$")
# the DVC stage that writes each kind of input (dvc.yaml); {name}: the model's folder name, {fp}: its FP model's
MAKERS = {"model": "model@{name}", "export": "quantize@{fp}", "circuits": "circuits@{name}",
          "attribute": "attribute@{name}"}
CIRCUIT_FILES = ("metrics.json", "effects.parquet", "ioi_heads.csv")


@dataclass(frozen=True)
class Pair:
    """An FP model and a quantized model made from it, by their folder names under ``paths.models``.

    ``method`` and ``bits`` are what the quantized model's ``card.json`` records
    (``extra.quantization``, written by :func:`interpipe.quant.export.save_quantized`), filled by
    :meth:`with_card`; empty when not read, and then :attr:`setting` reads them off the folder name.
    """

    fp: str
    quantized: str
    attribution: bool = True  # compare the attribute stage's results too (both models need them)
    method: str = ""  # quantization method from the quantized model's card ("" when not read)
    bits: str = ""  # w<b>a<b> from the quantized model's card ("" when not read)

    @property
    def setting(self) -> tuple[str, str]:
        """(method, bits) of the quantized model; ``("fp", "")`` for the FP model.

        From its card when :meth:`with_card` read one, else (an older export, or a pair built by
        name alone) off the quantized name ``<fp>-<method>-w<b>a<b>``.
        """
        if self.quantized == self.fp:
            return "fp", ""
        if self.method:
            return self.method, self.bits
        rest = self.quantized[len(self.fp) + 1:] if self.quantized.startswith(self.fp + "-") else self.quantized
        match = _SETTING.match(rest)
        return (match["method"], match["bits"]) if match else (rest, "")

    def with_card(self, models: str | Path) -> "Pair":
        """This pair with the method and bits the quantized model's ``card.json`` under ``models`` records
        (the pair unchanged when the folder, its card or the card's quantization entry is missing)."""
        card = Path(models) / self.quantized / "card.json"
        if self.quantized == self.fp or not card.is_file():
            return self
        quant = (read_json(card).get("extra") or {}).get("quantization") or {}
        if not (isinstance(quant, dict) and quant.get("method")):
            return self
        return replace(self, method=str(quant["method"]), bits=str(quant.get("bits") or ""))


@dataclass(frozen=True)
class Roots:
    """Where the model folders and the circuits and attribute results lie."""

    models: Path
    data: Path
    circuits: Path
    attribute: Path

    def circuit_folder(self, model: str, task: str) -> Path:
        return self.circuits / model / f"{model}-{task}"


def pairs_of(settings: QuantInterpSettings, models: str | Path | None = None) -> list[Pair]:
    """The pairs of ``settings``; with ``models`` (the model folders' root) each reads its quantized
    model's card for method and bits (:meth:`Pair.with_card`)."""
    pairs = [Pair(str(p["fp"]), str(p["quantized"]), bool(p.get("attribution", True))) for p in settings.pairs]
    return pairs if models is None else [p.with_card(models) for p in pairs]


def missing_inputs(pairs: list[Pair], roots: Roots, task: str, attribution: bool) -> list[str]:
    """One message per missing folder or file: what it is and the DVC stage that makes it."""
    problems = []
    fp_of = {**{p.quantized: p.fp for p in pairs}, **{p.fp: p.fp for p in pairs}}  # model -> its FP model
    attributed = {m for p in pairs if p.attribution for m in (p.fp, p.quantized)}
    for name, fp in fp_of.items():
        wanted = [("model" if name == fp else "export", roots.models / name),
                  *[("circuits", roots.circuit_folder(name, task) / f) for f in CIRCUIT_FILES]]
        if attribution and name in attributed:
            wanted.append(("attribute", roots.attribute / name))
        for kind, path in wanted:
            if not path.exists():
                stage = MAKERS[kind].format(name=name, fp=fp)
                problems.append(f"{path} is missing: run `dvc repro {stage}`"
                                + (" (the quantize stage exports it)" if kind == "export" else ""))
    for fp in dict.fromkeys(p.fp for p in pairs):
        config = roots.circuits / fp / ".hydra" / "config.yaml"
        if not config.exists():
            problems.append(f"{config} is missing: the FP circuits run's config sets the prompts the FP circuit "
                            f"is scored on; run `dvc repro circuits@{fp}`")
    return problems


def check_inputs(pairs: list[Pair], roots: Roots, task: str, attribution: bool) -> None:
    """Raise ``FileNotFoundError`` listing every missing input (cheap: nothing is loaded)."""
    problems = missing_inputs(pairs, roots, task, attribution)
    if problems:
        raise FileNotFoundError("quant_interp inputs missing: " + "; ".join(problems))


@dataclass
class CircuitRun:
    """One model's circuits-stage results on the task."""

    model: str
    metrics: dict[str, Any]
    heads: list[Component]  # the selected circuit's heads ([] when the task was not solved)
    components: list[Component]  # every selected component (heads, and MLPs when they were ablated)
    effects: Any  # DataFrame: the z_head effects (layer, head, effect) of ``effect_method``, denoising
    head_classes: Any  # DataFrame: ioi_heads.csv (per-head attention scores, direct effect, class)


def read_circuit_run(roots: Roots, model: str, task: str, effect_method: str) -> CircuitRun:
    """Read ``<circuits>/<model>/<model>-<task>/``; an unsolved task has an empty circuit."""
    import pandas as pd

    folder = roots.circuit_folder(model, task)
    circuit = read_json(folder / "circuit.json") if (folder / "circuit.json").exists() else {"components": []}
    effects = pd.read_parquet(folder / "effects.parquet")
    chosen = effects[(effects["analysis"] == "z_head") & (effects["method"] == effect_method)
                     & (effects["direction"] == "denoising")]
    metrics = read_json(folder / "metrics.json")
    classes = pd.read_csv(folder / "ioi_heads.csv", keep_default_na=False)
    if chosen.empty and not metrics.get("solved", 1):
        # an unsolved task gets DLA and the logit lens only (no patching): its per-head effects are unknown
        chosen = classes[["layer", "head"]].assign(effect=float("nan"))
    elif chosen.empty:
        found = sorted(set(effects.loc[effects["analysis"] == "z_head", "method"]))
        raise ValueError(f"{folder / 'effects.parquet'} has no z_head {effect_method} denoising effects "
                         f"(it has z_head methods {found}); set quant_interp.effect_method to one of them")
    components = [Component.parse(name) for name in circuit["components"]]  # names in the file, components from here on
    return CircuitRun(model, metrics, heads_of(components), components,
                      chosen[["layer", "head", "effect"]].astype({"layer": int, "head": int}), classes)


def circuit_settings(roots: Roots, model: str) -> CircuitSettings:
    """The circuit settings the circuits stage ran ``model`` with (its saved Hydra config)."""
    config = yaml.safe_load((roots.circuits / model / ".hydra" / "config.yaml").read_text())
    if not isinstance(config, dict) or "circuits" not in config:
        raise ValueError(f"{roots.circuits / model / '.hydra' / 'config.yaml'} has no circuits block: "
                         f"it is not a circuits run's config; rerun `dvc repro circuits@{model}`")
    return CircuitSettings(**config["circuits"])


def attribution_methods(roots: Roots, fp: str, quantized: str) -> list[str]:
    """The methods the attribute stage ran on both models (folders with ``attributions.parquet``)."""
    def methods(model: str) -> list[str]:
        folder = roots.attribute / model
        return sorted(p.parent.name for p in folder.glob("*/attributions.parquet"))

    theirs = set(methods(quantized))
    return [m for m in methods(fp) if m in theirs]
