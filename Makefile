# gentune: set-up, demo, tests. `make demo` and `make test` each install everything they need first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The workplace's shared data sits beside the repository; the library itself knows no such path.
SHARED_GLUE := $(abspath ../shared/data/glue)
export GENTUNE_DATA ?= $(if $(wildcard $(SHARED_GLUE)/full),$(SHARED_GLUE),)
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel; the project's torch>=2.4 is then satisfied without a download
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Fine-tune MiniLM on RTE (2,240 training pairs) with the defaults, then evaluate the best model on a GLUE TSV.
demo: install
	$(VENV)/bin/gentune finetune --task rte --out runs/demo-rte
	$(VENV)/bin/gentune evaluate --checkpoint runs/demo-rte/best --task rte --data $(GENTUNE_DATA)/k-shot/RTE/16-13/dev.tsv

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
