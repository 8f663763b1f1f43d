"""Interpretability under quantization: do an FP model's circuit, head classes and attributions survive?

For each (FP model, quantized model) pair — a quantized model is an ordinary model folder exported
by the quantize stage — the pair is first judged solved or unsolved by one rule (:mod:`.verdict`:
the quantized model's pairwise IOI accuracy above chance; an unsolved pair's mechanism numbers are
undefined, not 0), then the FP IOI circuit is scored inside the quantized model (:mod:`.transfer`),
the circuit rediscovered there is compared with the FP one, with the per-head patching effects and
the IOI head classes (:mod:`.compare`), and each token-attribution method's scores and faithfulness
are compared (:mod:`.drift`); :mod:`.study` runs it all, :mod:`.tables` and :mod:`.figures` write it.
:mod:`.pairs` chooses pairs on both sides of each method's survival frontier (the quantize stage's
``frontier.csv``); :mod:`.basis` says what compares across a rotated (QuaRot) pair.
"""

from interpipe.quant_interp.inputs import Pair, check_inputs
from interpipe.quant_interp.study import run_quant_interp
from interpipe.settings.quant_interp import QuantInterpSettings

__all__ = ["Pair", "QuantInterpSettings", "check_inputs", "run_quant_interp"]
