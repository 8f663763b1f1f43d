"""Stage `circuits`: the circuit study on one model, one folder per task plus the circuit overlap.

    python -m stages.circuits model=toy hydra.run.dir=outputs/circuits/toy
    python -m stages.circuits model=toy circuits.tasks=[sva] circuits.n_prompts=64
    python -m stages.circuits experiment=circuits_gpt2_ioi model=gpt2 device=cuda hydra.run.dir=outputs/circuits/gpt2
"""

import hydra

from interpipe.circuits import run_circuits
from stages._app import run_stage


def _circuits(s, out, record):
    return run_circuits(s.circuits, f"{s.paths.models}/{s.model.name}", s.paths.data, out,
                        model_name=s.model.name, device=s.device, dtype=s.dtype, info=record)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "circuits", _circuits)


if __name__ == "__main__":
    main()
