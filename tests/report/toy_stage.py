"""A stage that computes nothing: known metrics from its config, for sweep tests.

    python tests/report/toy_stage.py -m model=toy,minilm seed=0,1 hydra/launcher=local
"""

import hydra

from stages._app import run_stage


def _known(s, out, record) -> dict:
    return {"ioi/accuracy": s.seed / 10 + (0.5 if s.model.name == "minilm" else 0.0)}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "toy_stage", _known, method="known")


if __name__ == "__main__":
    main()
