"""Stage `aggregate`: every study's results in one table and one page, outputs/report/.

    python -m stages.aggregate hydra.run.dir=outputs/report
    python -m interpipe.report.summary outputs/report   # where the page is + a summary table

Reads every `metrics.json` under `report.roots` (the `dvc repro` outputs and Hydra multirun
folders), so run it again after a sweep to see the sweep in the table.
"""

import os

import hydra

from interpipe.report import run_aggregate
from stages._app import run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    run_stage(cfg, "aggregate", lambda s, out, _record: run_aggregate(s.report, out_dir=out, repo=".", env=os.environ))


if __name__ == "__main__":
    main()
