# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_RECIPE ?= casm
DEMO_OUT ?= $(DEMO_RECIPE)-demo

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 resolves to the CPU build here. GPU users install
	# their CUDA build of torch into the venv before running make.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,gcs,s3,gateway]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/casm-cloud demo --recipe $(DEMO_RECIPE) --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check casm_cloud tests benchmarks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
