# Everything sets itself up from a fresh clone: the first target that needs the virtual
# environment builds it (CPU torch pinned to 2.13.0, which pip takes from the local wheel).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_CPU := torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps test lint bench serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_CPU)
	$(PY) -m pip install --quiet -e ".[serve,train,dev]"
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) system-deps
	$(MAKE) lint
	$(PY) -m pytest -q

# Heavy measurements live here, never in timed tests; each writes JSON + markdown to bench/results/.
bench: $(STAMP)
	$(PY) -m bench.speed --out bench/results
	$(PY) -m bench.service_bench --out bench/results
	$(PY) -m bench.train_speed --out bench/results

serve: $(STAMP)
	$(PY) -m service --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Reproduce the three shipped default models from ../shared/data/train (issue 4): stage 1 then
# stage 2 per task into runs/defaults/<task>/ (re-running resumes), copy the stage-2 checkpoints to
# models/weights/ and evaluate them against the classic baselines.
.PHONY: train-defaults
train-defaults: $(STAMP)
	$(PY) -m training.defaults train --parallel
	$(PY) -m training.defaults ship
	for t in deblur sr-x4 inpaint; do $(PY) -m training evaluate --task $$t --out runs/defaults/$$t/eval || exit 1; done
