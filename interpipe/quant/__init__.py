"""Post-training quantization study: outliers, RTN vs SmoothQuant vs Outlier Suppression+.

Fake quantization (:mod:`~interpipe.quant.fake`) of the target linears
(:mod:`~interpipe.quant.layers`) with static ranges from :mod:`~interpipe.quant.observers`, outlier statistics at every quantized input
(:mod:`~interpipe.quant.calibrate`, :mod:`~interpipe.quant.outliers`), SmoothQuant (Xiao et al.
2023) and OS+ (Wei et al. 2023) migration folded into LayerNorm and the next linear, exact for
pre-LN (GPT-2) and with a shortcut restore for post-LN (BERT) blocks
(:mod:`~interpipe.quant.migrate`, :mod:`~interpipe.quant.arch`), end metrics
(:mod:`~interpipe.quant.metrics`), results over calibration seeds (:mod:`~interpipe.quant.results`) with
intervals over seeds and held-out examples (:mod:`~interpipe.quant.resample`), and the survival frontier
per method (:mod:`~interpipe.quant.frontier`).
:func:`run_quantize` runs a whole grid on one model; :mod:`~interpipe.quant.recipe` re-applies an
exported setting when a model folder is loaded.

The names below load their module on first use (PEP 562), so the model loader can import
:mod:`interpipe.quant.recipe` without the study's heavy dependencies.
"""

from importlib import import_module

_HOME = {
    "Arch": "arch", "describe_arch": "arch",
    "ActSpec": "fake", "WeightSpec": "fake", "fake_quantize": "fake", "quantize_activation": "fake",
    "quantize_weight": "fake",
    "Migration": "migrate", "fold": "migrate", "migrate": "migrate", "smoothquant_scales": "migrate",
    "Observer": "observers", "static_range": "observers",
    "METHODS": "settings", "QuantSettings": "settings", "parse_bits": "settings",
    "load_migrated": "export", "save_migrated": "export",
    "QuantStudyResult": "results", "SettingResult": "results",
    "run_quantize": "study",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'interpipe.quant' has no attribute {name!r}")
    home = "interpipe.settings.quantize" if _HOME[name] == "settings" else f"interpipe.quant.{_HOME[name]}"
    return getattr(import_module(home), name)
