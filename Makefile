# `make demo` and `make test` work on a fresh machine: they create .venv, install the CPU build of
# torch first (an unpinned torch would pull a multi-GB CUDA build), then this package without
# replacing torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: venv demo test lint clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]" "torch==$(TORCH_VERSION)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m unica demo --out demo-output

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo-output .pytest_cache build *.egg-info
