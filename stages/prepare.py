"""Stage `prepare`: generate the task datasets and the toy model's training corpus.

    python -m stages.prepare hydra.run.dir=outputs/data data.n_test=128
"""

import hydra

from interpipe.data import prepare_all
from stages._app import run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "prepare", lambda s, out, _record: prepare_all(out, s.data), name="prepare")


if __name__ == "__main__":
    main()
