"""Post-training quantization study: outliers, RTN vs SmoothQuant vs Outlier Suppression+.

Fake quantization (:mod:`~interpipe.quant.fake`) of the target linears
(:mod:`~interpipe.quant.layers`) with static ranges from :mod:`~interpipe.quant.observers`, outlier statistics at every quantized input
(:mod:`~interpipe.quant.calibrate`, :mod:`~interpipe.quant.outliers`), SmoothQuant (Xiao et al.
2023) and OS+ (Wei et al. 2023) migration folded into LayerNorm and the next linear, exact for
pre-LN (GPT-2) and with a shortcut restore for post-LN (BERT) blocks
(:mod:`~interpipe.quant.migrate`, :mod:`~interpipe.quant.arch`), end metrics
(:mod:`~interpipe.quant.metrics`) and results over calibration seeds (:mod:`~interpipe.quant.results`).
:func:`run_quantize` runs a whole grid on one model.
"""

from interpipe.quant.arch import Arch, describe_arch, install_shortcut
from interpipe.quant.fake import ActSpec, WeightSpec, fake_quantize, quantize_activation, quantize_weight
from interpipe.quant.migrate import fold, migrate, smoothquant_scales
from interpipe.quant.observers import Observer, static_range
from interpipe.settings.quantize import METHODS, QuantSettings, parse_bits
from interpipe.quant.export import load_migrated, save_migrated
from interpipe.quant.results import QuantStudyResult, SettingResult
from interpipe.quant.study import run_quantize

__all__ = ["ActSpec", "Arch", "METHODS", "Observer", "QuantSettings", "QuantStudyResult", "SettingResult", "WeightSpec",
           "describe_arch", "fake_quantize", "fold", "install_shortcut", "load_migrated", "migrate",
           "parse_bits", "quantize_activation", "quantize_weight", "run_quantize", "save_migrated", "smoothquant_scales",
           "static_range"]
