# Two commands do all set-up:  `make demo`  and  `make test`.
# Both create .venv on first use. torch is installed first and pinned (TORCH_SPEC) so that no other
# package pulls a CUDA build; on a GPU machine set TORCH_SPEC to your CUDA build of torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/constraints.txt
	$(PIP) install -c $(VENV)/constraints.txt -e ".[test,dask]"
	# zennit declares torchvision as a dependency but LRP does not need it (see brainage/explain/_zennit.py)
	$(PIP) install --no-deps "zennit==0.5.1"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/brainage demo --out brainage-demo

test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not integration and not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

bench: $(VENV)/.installed
	$(PY) bench/bench_pipeline.py

clean:
	rm -rf $(VENV) brainage-demo brainage-demo_work .pytest_cache
