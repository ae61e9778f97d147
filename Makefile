# Two entry points for a fresh machine: `make train` (the main job) and `make test`.
# Both create .venv on first use. torch is installed first and pinned (constraints.txt) so no
# later dependency can swap it for a CUDA build on a CPU machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test clean-runs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt -e '.[hf,deepspeed,slurm,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Trains the tiny DiT on the generated moving-shapes shards (rendered on first use), then prints
# where the checkpoint, metrics and sample clip are. Extra Hydra overrides: make train ARGS="..."
train: $(STAMP)
	$(PY) -m litegen.train experiment=tiny $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-runs:
	rm -rf runs multirun
