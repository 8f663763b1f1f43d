"""Stage `model`: write the canonical folder outputs/models/<name>/ for `model=`.

    python -m stages.model model=toy hydra.run.dir=outputs/models/toy
    python -m stages.model model=gpt2 device=cuda hydra.run.dir=outputs/models/gpt2
"""

import hydra

from interpipe.models.build import BuildRequest, build_model
from stages._app import run_stage


def _build(s, out, _record):
    m = s.model
    request = BuildRequest(name=m.name, source=m.source, kind=m.kind, revision=m.revision,
                           trust_remote_code=m.trust_remote_code, device_map=m.device_map,
                           finetune_task=m.finetune_task, finetune=dict(m.finetune), toy=m.toy)
    return build_model(request, s.paths.data, out, device=s.device, dtype=s.dtype)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "model", _build)


if __name__ == "__main__":
    main()
