"""Stage `attribute`: every attribution method on one model, one folder per method.

    python -m stages.attribute model=toy hydra.run.dir=outputs/attribute/toy
    python -m stages.attribute model=minilm-sentiment attribute.methods=[normxlogit,integrated_gradients]
    python -m stages.attribute experiment=attribution_paper model=gpt2 device=cuda
"""

import hydra

from interpipe.attribution import run_attribute
from interpipe.runtime import resolve_device
from stages._app import run_stage


def _attribute(s, out, record):
    return run_attribute(s.attribute, f"{s.paths.models}/{s.model.name}", s.paths.data, out,
                         device=str(resolve_device(s.device)), dtype=s.dtype, info=record)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    methods = list(cfg.attribute.methods)
    run_stage(cfg, "attribute", _attribute, method=methods[0] if len(methods) == 1 else None)


if __name__ == "__main__":
    main()
