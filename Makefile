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
	$(PY) -m pip install -q -e '.[dev]'   # the contributors' install: peft, tensorboard, pytest and pytest-xdist too
	touch $@

install: $(VENV)/.installed

# Fine-tune MiniLM on 2,000 SST-2 sentences; the best checkpoint is picked on 500 other training sentences
# (dev_from_train), so full/SST-2/dev.tsv, which the run never sees, gives an honest held-out score (the k-shot files
# are drawn from the training set: never evaluate on them). Progress lines print while it trains, piped or not.
demo: install
	$(VENV)/bin/gentune finetune --task sst2 --out runs/demo-sst2 --train-size 2000 --set dev_from_train=500
	$(VENV)/bin/gentune evaluate --checkpoint runs/demo-sst2/best --task sst2 --data $(GENTUNE_DATA)/full/SST-2/dev.tsv

test: install
	$(PY) -m pytest -q -n 2 --dist worksteal tests

clean:
	rm -rf $(VENV) runs .pytest_cache
