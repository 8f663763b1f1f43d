#!/usr/bin/env bash
# `make run`'s `dvc repro` of the default pipeline (dvc.yaml), with both CPU cores at work.
#
# DVC runs one stage at a time, but it releases its repository lock while a stage's command runs, so
# two `dvc repro` processes on disjoint branches of the DAG run side by side: DVC's documented way to
# run stages in parallel. Each stage runs exactly as a plain `dvc repro` runs it (same command, same
# thread count, same numbers); only the order of the two branches' stages interleaves.
#   1. prepare: the data both branches read;
#   2. at once: the toy and MiniLM branch (the toy's one-thread training leaves a core free) and the
#      SmolLM2 branch;
#   3. a plain `dvc repro` for the stages that read both branches (quant_interp, aggregate), which also
#      runs any stage the two branches' patterns leave out.
# A plain `dvc repro` runs the same pipeline one stage at a time.
#
# OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads spin while they wait for work, so two processes of
# two threads each on two cores slow each other down fivefold (measured here: ten SmolLM2 forwards take
# 6.8 s alone, 36 s each when two processes run them at once, 12 s each with passive waiting; 7.0 s alone).
set -euo pipefail
cd "$(dirname "$0")/.."

TOY_AND_MINILM=('model@toy' 'evaluate@toy' 'weights@*-toy' 'circuits@toy*' 'attribute@toy' 'quantize@toy'
                '*@minilm-sentiment')
SMOLLM2=('*smollm2*')

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
dvc repro prepare
trap 'trap - INT TERM; kill 0' INT TERM  # Ctrl-C stops both branches (each stage's outputs appear only when it succeeds)
dvc --wait-for-lock repro --glob "${TOY_AND_MINILM[@]}" &
toy=$!
status=0
dvc --wait-for-lock repro --glob "${SMOLLM2[@]}" || status=$?
wait "$toy" || status=$?
if [ "$status" != 0 ]; then
  echo "a branch of the pipeline failed (exit $status): see its stage's error above" >&2
  exit "$status"
fi
dvc --wait-for-lock repro
