#!/usr/bin/env bash
# The whole visit to a lent NVIDIA machine (Python 3.12 with a CUDA torch, no network): the GPU check, then
# the training recipe, results in $OUT after every step. Capped at 9.5 minutes (most runs take about 9).
#
# Before the visit, here (network, the project's venv):
#   make gpu-visit-prep            # wheels/py312 (computed carried wheels) + gpu-data (training subset);
#                                  # prints the tree + carry size, which must stay within 64 MiB
#                                  # (2026-12-07: tree 44.4 + wheels 9.8 + data 7.7 = 61.9 MiB)
# The device call (device tool `run`):
#   command:   bash bench/gpu_visit.sh
#   carry:     ["wheels/py312", "gpu-data"]
#   timeout_s: 590
# A rerun of only the failed steps (the visit prints the exact line; visit.json holds it as `rerun`):
#   command:   bash bench/gpu_visit.sh --only http,throughput,train-inpaint      (same carry, timeout_s 590)
# Afterwards, here: python -m training.gpu_recipe evaluate <returned folder> [--ship]
#
#   bash bench/gpu_visit.sh --size-only     # the tree + carry size only
#   bash bench/gpu_visit.sh --cpu           # the same visit on a CPU at toy sizes (make test runs it)
# Phases and files: bench/gpu_visit.py. Exit status 1 when a step failed, 124 when the visit ran out of time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
limit=570 # inside the device tool's 10-minute command limit; a CPU run (a test on 2 busy cores) gets longer
for arg in "$@"; do if [ "$arg" = --cpu ]; then limit=1500; fi; done
exec timeout --kill-after=15 "${DIFFIR_GPU_VISIT_TIMEOUT_S:-$limit}" "$PY" -m bench.gpu_visit "$@"
