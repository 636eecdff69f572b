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

.PHONY: venv demo test lint clean vista-reference bench

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

# The reference VISTA implementation for tests/test_vista.py (FlagEmbedding 1.2.11's Visualized_BGE and what it
# imports), in its own folder beside the venv: torchvision is only on the registry as a CUDA build, which must not
# be importable in the project's venv (transformers would pick it up). tests/vista_reference.py runs it.
vista-reference: venv
	$(PY) -m pip install -q --no-deps --target .vista-reference "FlagEmbedding==1.2.11" "timm==1.0.31" \
		"einops==0.8.2" "ftfy==6.3.1" "wcwidth==0.9.4" "torchvision==0.28.0"

# Every benchmark (benchmarks/run_all.py): JSONs in benchmarks/results/, one summary table (under 20 minutes on 2
# cores). benchmarks/encode.py compares with the reference VISTA code: installed first where it is missing.
bench: venv
	test -f .vista-reference/FlagEmbedding/visual/modeling.py || $(MAKE) vista-reference
	$(PY) -m benchmarks.run_all

clean:
	rm -rf demo-output .pytest_cache build *.egg-info
