"""Stage `quantize`: outliers and RTN / SmoothQuant / OS+ / GPTQ / LLM.int8() / QuaRot over bits and seeds on one model.

    python -m stages.quantize model=minilm hydra.run.dir=outputs/quantize/minilm
    python -m stages.quantize model=toy quantize.methods=[osplus] quantize.bits=[w4a4]
    python -m stages.quantize model=smollm2 quantize=smollm2 hydra.run.dir=outputs/quantize/smollm2
    python -m stages.quantize model=minilm quantize=grid     # every method x bits x seed
    python -m stages.quantize experiment=quantize_paper model=smollm2   # paper scale
    python -m stages.quantize model=smollm2 quantize=smollm2_gpu   # every method, 128 texts x 5 seeds (one GPU)
    python -m stages.quantize model=toy 'quantize.methods=[rtn,gptq,llmint8]' quantize.act_granularity=per_token_dynamic
    python -m stages.quantize -m experiment=quantize_ablations model=minilm   # alpha x calibration size
    python -m stages.quantize model=toy quantize.export=[osplus-w6a6]   # also writes outputs/models/toy-osplus-w6a6
"""

import hydra

from interpipe.quant.study import run_quantize
from interpipe.runtime import resolve_device
from stages._app import run_stage


def _quantize(s, out, record):
    study = run_quantize(s.quantize, f"{s.paths.models}/{s.model.name}", s.paths.data, out,
                         device=str(resolve_device(s.device)), dtype=s.dtype, seed=s.seed, export_root=s.paths.models,
                         info=record)
    return study.metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    methods = list(cfg.quantize.methods)
    run_stage(cfg, "quantize", _quantize, method=methods[0] if len(methods) == 1 else None)


if __name__ == "__main__":
    main()
