# Everything sets itself up from a fresh clone: the first target that needs the virtual environment
# builds it. `make serve` installs only what serving needs; `make test` adds training and the dev tools.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SERVE_STAMP := $(VENV)/.serve-installed
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# PyPI's Linux torch is the CUDA build (GBs of CUDA libraries); PyTorch's CPU index has the CPU build.
# `make serve TORCH_INDEX=` takes torch from pip's own configuration instead (a mirror, a local wheel).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP := torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps test lint bench serve clean lock

$(SERVE_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed (PYTHON=python3.11 make ...)" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP)
	$(PY) -m pip install --quiet -e ".[serve,onnxruntime]"
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	$(PY) -m pip install --quiet -e ".[serve,onnxruntime,train,dev]"
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

system-deps:
	bash scripts/system-deps.sh

# Tests that need Chromium, Prometheus or nginx skip (naming what is missing) unless `make system-deps` installed them.
test: $(STAMP)
	$(MAKE) lint
	$(PY) -m pytest -q --durations=25

# Heavy measurements live here, never in timed tests; each writes JSON + markdown to bench/results/.
bench: $(STAMP)
	$(PY) -m bench.speed --out bench/results
	$(PY) -m bench.service_bench --out bench/results
	$(PY) -m bench.train_speed --out bench/results
	$(PY) -m bench.inpaint_fill --out bench/results
	$(PY) -m bench.tile_size models/weights/deblur.safetensors --out bench/results
	$(PY) -m bench.tile_size models/weights/inpaint.safetensors --out bench/results
	$(PY) -m bench.strip_cost --out bench/results
	$(PY) -m bench.non_finite --out bench/results
	$(PY) -m bench.attacks --out bench/results

# The CPU image and `docker compose up` for real (pytest -m container): installs Debian's docker.io and starts a
# daemon where there is none, builds base images without Docker Hub; see scripts/container-check.sh.
# `make bench-container`: build time, image size, cold/warm start -> bench/results/container.{json,md}.
.PHONY: container-check bench-container
container-check: $(STAMP)
	bash scripts/container-check.sh check

bench-container: $(STAMP)
	bash scripts/container-check.sh bench

serve: $(SERVE_STAMP)
	$(PY) -m service --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# The images' hashed lock files (docker/requirements-{cpu,cuda}.txt) from pyproject's extras; see docker/lock.sh.
lock: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash docker/lock.sh

# The training and evaluation images (training/data/sources.json: upstream URLs pinned to a commit, SHA-256,
# each set's licence) into data/ (git-ignored; DIFFIR_DATA moves it). Resumes an interrupted download, keeps
# only files with the listed checksum. DATA_MIRROR: a folder or URL laid out like data/ to fetch from instead.
DATA_MIRROR ?=
.PHONY: data
data: $(SERVE_STAMP)
	$(PY) -m training.data fetch $(if $(DATA_MIRROR),--mirror $(DATA_MIRROR))

# Reproduce the three shipped default models from data/train (fetched by `make data`): stage 1 then
# stage 2 per task into runs/defaults/<task>/ (re-running resumes), copy the stage-2 checkpoints to
# models/weights/ and evaluate them against the classic baselines.
.PHONY: train-defaults
train-defaults: $(STAMP) data
	$(PY) -m training.defaults train --parallel
	$(PY) -m training.defaults ship
	for t in deblur sr-x4 inpaint; do $(PY) -m training evaluate --task $$t --out runs/defaults/$$t/eval || exit 1; done

# A lent GPU machine (Python 3.12, CUDA torch, no network, 64 MiB of tree + carry): `make gpu-visit-prep`
# here computes the carried wheels (wheels/py312, bench/gpu_wheels.py) and copies a training subset of
# $(GPU_DATA) into gpu-data/ (both ignored by git), then prints the tree + carry size; the device call is
# `bash bench/gpu_visit.sh` carrying both folders (the check, then the training recipe, in ~9 minutes).
# `make train-gpu` is the recipe alone, run with the machine's own python3: no venv, no network.
GPU_OUT ?= $(if $(OUT),$(OUT),runs/gpu)
GPU_DATA ?= $(or $(DIFFIR_DATA),data)
GPU_MINUTES ?= 2.5
.PHONY: train-gpu gpu-visit-prep
gpu-visit-prep: $(STAMP)
	$(PY) -m bench.gpu_wheels fetch --python 3.12 --dest wheels/py312
	mib=$$(PYTHON=$(PY) bash bench/gpu_visit.sh --room) && \
	  $(PY) -m training.gpu_recipe subset --data-root $(GPU_DATA) --dest gpu-data --max-mib $$mib
	PYTHON=$(PY) bash bench/gpu_visit.sh --size-only

train-gpu:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m training.gpu_recipe train --out $(GPU_OUT) --data-root gpu-data --minutes $(GPU_MINUTES)

# Serving images, tagged as k8s/ deploys them: $(IMAGE):$(VERSION)-cuda (k8s/base) and -cpu (k8s/overlays/cpu).
# `make image` builds both (Docker with BuildKit), `make image-push` also pushes them (.github/workflows/release.yml
# runs it on a version tag). Another registry: `make image-push IMAGE=registry.example.com/diffir-serve`, then
# point kustomize's `images:` at it (README, Deployment).
IMAGE   ?= ghcr.io/diffir-serve/diffir-serve
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER  ?= docker

.PHONY: image image-cpu image-cuda image-push print-version
image: image-cpu image-cuda

image-cpu:
	$(DOCKER) build -f docker/Dockerfile.cpu --target serve -t $(IMAGE):$(VERSION)-cpu .

image-cuda:
	$(DOCKER) build -f docker/Dockerfile.cuda --target serve -t $(IMAGE):$(VERSION)-cuda .

image-push: image
	$(DOCKER) push $(IMAGE):$(VERSION)-cpu
	$(DOCKER) push $(IMAGE):$(VERSION)-cuda

print-version:
	@echo $(VERSION)
