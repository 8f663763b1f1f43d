"""`make run`'s `dvc repro` of the default pipeline (dvc.yaml), with both CPU cores at work.

    python pipelines/repro.py            # what `make run` does (from the repository root, .venv on PATH)
    python pipelines/repro.py --plan     # print the steps and each branch's stages, run nothing

DVC runs one stage at a time, but it releases its repository lock while a stage's command runs, so two
`dvc repro` processes on disjoint branches of the DAG run side by side: DVC's documented way to run
stages in parallel. Every stage runs exactly as a plain `dvc repro` runs it (same command, same thread
count, same numbers); only the order of the two branches' stages interleaves. The steps:

1. `dvc repro` of :data:`FIRST`: the data and the SmolLM2 folder that both branches read;
2. at once, one `dvc repro --single-item` per branch of :data:`BRANCHES` (its stages in the DAG's
   order). Single items, because DVC write-locks a stage's outputs while it checks the stage, so two
   processes that both checked `prepare` would block each other; step 1 has run it. A branch's stages
   read only step 1's outputs and their own branch's (checked before anything runs);
3. a plain `dvc repro`: the stages that read both branches (quant_interp, aggregate), and any stage
   the branches' patterns leave out.

A plain `dvc repro` runs the same pipeline one stage at a time.

OMP_WAIT_POLICY=PASSIVE (unless set): PyTorch's OpenMP threads spin while they wait for work, so two
processes of two threads each on two cores slow each other down fivefold. Measured here: ten SmolLM2
forwards take 6.8 s alone and 36 s each when two processes run them at once; 12 s each with passive
waiting, 7.0 s alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST = ("prepare", "model@smollm2")  # what both branches read
# Two branches of about equal wall time (a fresh clone's run, stage walls + DVC's ~4 s a stage: ~860 and ~820 s); the toy's training
# runs on one thread, leaving a core to the other branch's two-thread stages.
BRANCHES = {
    "toy, MiniLM, SmolLM2's weight studies and attribution": ["model@toy", "evaluate@toy", "weights@*-toy",
                                                              "circuits@toy*", "attribute@toy", "quantize@toy",
                                                              "*@minilm-sentiment", "weights@*-smollm2",
                                                              "attribute@smollm2"],
    "SmolLM2's evaluation, circuits and quantization": ["evaluate@smollm2", "quantize@smollm2", "circuits@smollm2*",
                                                        "attribute@smollm2-*"],
}


def dag(root: Path = ROOT) -> tuple[list[str], dict[str, set[str]]]:
    """The stages of ``root/dvc.yaml`` in an order DVC can run them (upstream first), and each stage's
    upstream stages (all of them, not only the direct ones)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        own = [s for s in graph if Path(s.path).parent == root]  # pipelines/*/dvc.yaml are not the default
        order = [s for s in nx.dfs_postorder_nodes(graph) if s in own]
        return [s.addressing for s in order], {s.addressing: {d.addressing for d in nx.descendants(graph, s)}
                                               for s in order}


def branch_stages(order: list[str], patterns: list[str]) -> list[str]:
    """The stages of ``order`` that match one of the ``fnmatch`` ``patterns``, in that order."""
    return [name for name in order if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def plan(order: list[str], upstream: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each branch's stages; refuses branches that share a stage or where one reads another's outputs."""
    branches = {name: branch_stages(order, patterns) for name, patterns in BRANCHES.items()}
    owner: dict[str, str] = {}
    for name, stages in branches.items():
        if not stages:
            raise ValueError(f"branch {name!r} matches no stage of dvc.yaml (its patterns: {BRANCHES[name]})")
        for stage in stages:
            if stage in FIRST:
                raise ValueError(f"stage {stage!r} runs before the branches: drop it from branch {name!r} "
                                 "in BRANCHES (pipelines/repro.py)")
            if stage in owner:
                raise ValueError(f"stage {stage!r} is in branch {owner[stage]!r} and in {name!r}: "
                                 "fix BRANCHES in pipelines/repro.py")
            owner[stage] = name
    for stage, name in owner.items():
        crossing = sorted(u for u in upstream[stage] if u not in FIRST and owner.get(u) != name)
        if crossing:
            raise ValueError(f"stage {stage!r} (branch {name!r}) reads the outputs of {crossing}, which another "
                             "branch or the last step makes: the branches would race; move it in BRANCHES")
    return branches


def _dvc(*args: str) -> list[str]:
    return ["dvc", *args]


def run(branches: dict[str, list[str]]) -> int:
    """The three steps; returns the first non-zero exit status (both branches always finish)."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    status = subprocess.call(_dvc("repro", *FIRST), cwd=ROOT, env=env)
    if status:
        return status
    procs = {name: subprocess.Popen(_dvc("--wait-for-lock", "repro", "--single-item", *stages), cwd=ROOT, env=env)
             for name, stages in branches.items()}
    try:
        failed = [(name, code) for name, code in ((n, p.wait()) for n, p in procs.items()) if code]
    except KeyboardInterrupt:  # each stage's outputs appear only when it succeeds: stopping loses nothing
        for proc in procs.values():
            proc.terminate()
        raise
    for name, code in failed:
        print(f"the {name} branch of the pipeline failed (exit {code}): see its stage's error above", file=sys.stderr)
    if failed:
        return failed[0][1]
    return subprocess.call(_dvc("--wait-for-lock", "repro"), cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", action="store_true", help="print the steps and each branch's stages, run nothing")
    args = parser.parse_args(argv)
    try:
        branches = plan(*dag())
    except ValueError as exc:
        print(f"pipelines/repro.py: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        print(f"1. dvc repro {' '.join(FIRST)}")
        for name, stages in branches.items():
            print(f"2. at once, {name}: dvc repro --single-item {' '.join(stages)}")
        print("3. dvc repro (the rest)")
        return 0
    return run(branches)


if __name__ == "__main__":
    raise SystemExit(main())
