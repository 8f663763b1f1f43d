"""Stage `evaluate`: loss, accuracy and logit difference of one model on every task.

    python -m stages.evaluate model=toy hydra.run.dir=outputs/evaluate/toy
    python -m stages.evaluate -m model=toy,minilm   # a sweep, one folder per job
"""

import hydra

from interpipe.models.evaluate import evaluate_model
from interpipe.runtime import resolve_device
from stages._app import run_stage


def _evaluate(s, out, _record):
    folder = f"{s.paths.models}/{s.model.name}"
    return evaluate_model(folder, s.paths.data, device=str(resolve_device(s.device)), dtype=s.dtype)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "evaluate", _evaluate)


if __name__ == "__main__":
    main()
