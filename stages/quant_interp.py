"""Stage `quant_interp`: the FP circuit, head classes and attributions compared with each quantized model's.

    python -m stages.quant_interp hydra.run.dir=outputs/quant_interp
    python -m stages.quant_interp 'quant_interp.pairs=[{fp: toy, quantized: toy-osplus-w6a6}]' hydra.run.dir=outputs/quant_interp
"""

import hydra

from interpipe.quant_interp import run_quant_interp
from stages._app import run_stage


def _quant_interp(s, out, _record):
    return run_quant_interp(s.quant_interp, out, s.paths.models, s.paths.data, device=s.device, dtype=s.dtype)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "quant_interp", _quant_interp)


if __name__ == "__main__":
    main()
