#!/usr/bin/env bash
# Fetch the wheels `bench/gpu_check.sh` installs on a GPU machine that has Python 3.12 and a CUDA
# build of torch but no network and none of the serving packages (FastAPI, uvicorn, pydantic, ...).
#
#   scripts/fetch_gpu_wheels.sh [DEST]      # DEST default: wheels/py312 (ignored by git)
#
# Versions are the ones pinned in docker/requirements-cpu.txt (the service's lock file). Only
# binary wheels for CPython 3.12 on x86-64 Linux, no dependencies resolved here: torch and numpy
# are already on such a machine, and the list below is the rest of what `python -m service` and
# the GPU-marked tests import. The folder must travel with the working tree: the device tool
# carries at most 64 MiB in all, and the tree is ~37 MiB, so this list stays under ~20 MiB
# (onnxruntime-gpu, ~250 MB, cannot travel; the check says so and tests the torch paths).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-wheels/py312}"
LOCK=docker/requirements-cpu.txt
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PACKAGES=(
  fastapi fastapi-offline starlette annotated-doc pydantic pydantic-core pydantic-settings python-dotenv
  annotated-types typing-extensions typing-inspection anyio sniffio idna uvicorn h11 click
  python-multipart prometheus-client httpx httpcore certifi pillow pypng tifffile safetensors tqdm
  pytest pluggy iniconfig packaging pytest-timeout pygments
)
specs=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -iE "^${name}==" "$LOCK" | head -1 | cut -d' ' -f1 | tr -d '\\' || true)
  specs+=("${pin:-$name}")
done
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  --dest "$DEST" "${specs[@]}"
du -sh "$DEST"
