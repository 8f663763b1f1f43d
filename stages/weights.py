"""Stage `weights`: one weight-level study (Talking Heads, bigram subnetworks, LayerNorm removal).

    python -m stages.weights weights.study=talking_heads hydra.run.dir=outputs/talking_heads/toy
    python -m stages.weights weights.study=bigram weights.bigram.l0_lambda=10 hydra.run.dir=outputs/bigram/toy
    python -m stages.weights weights.study=lnfree hydra.run.dir=outputs/lnfree/toy
    python -m stages.weights experiment=weights_gpt2 weights.study=lnfree device=cuda hydra.run.dir=outputs/lnfree/gpt2

Training checkpoints live in ``<run dir>/checkpoint/`` until the study finishes, so an
interrupted run resumes where it stopped.
"""

from pathlib import Path

import hydra

from interpipe.runtime import resolve_device
from interpipe.weights import run_weights
from stages._app import run_stage


def _weights(s, out, record):
    return run_weights(s.weights, f"{s.paths.models}/{s.model.name}", s.paths.data, out,
                       checkpoint_dir=Path(s.paths.out) / "checkpoint", seed=s.seed,
                       device=str(resolve_device(s.device)), dtype=s.dtype, info=record)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "weights", _weights, name=f"{cfg.weights.study}-{cfg.model.name}", tags=[cfg.weights.study])


if __name__ == "__main__":
    main()
