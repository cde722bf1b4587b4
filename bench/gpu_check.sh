#!/usr/bin/env bash
# GPU check of the whole CUDA path, for a lent NVIDIA machine without network (about 5 minutes, capped at 8).
#
#   bench/gpu_check.sh                      # results in $DIFFIR_GPU_CHECK_OUT, else $OUT, else bench/results/gpu-check
#   DIFFIR_GPU_CHECK_CPU=1 bench/gpu_check.sh   # the same steps on the CPU at tiny sizes (tests the check)
#
# Usually run as the first half of `bench/gpu_visit.sh` (the whole GPU visit). Made for a machine with
# Python 3.12 and a CUDA build of torch but not the serving packages: `python -m bench.gpu_wheels fetch`
# first computes and downloads the wheels it lacks (wheels/py312, ~10 MiB, ignored by git); carry that
# folder with the working tree, and what is missing or too old is unpacked from it offline
# (DIFFIR_WHEELS names another folder). The steps, what each compares and the JSON layout are described in
# bench/gpu_check.py. gpu_check.json is rewritten after every step, so a run cut short still
# reports what it did; gpu_check.md and service.log sit next to it. Exit status 1 when any step
# failed, 124 when the whole check ran out of time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT_DIR="${DIFFIR_GPU_CHECK_OUT:-${OUT:-bench/results/gpu-check}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# the wall-clock cap of the lent machine's calls is 10 minutes; stay well inside it
exec timeout --kill-after=20 "${DIFFIR_GPU_CHECK_TIMEOUT_S:-480}" "$PY" -m bench.gpu_check --out "$OUT_DIR"
