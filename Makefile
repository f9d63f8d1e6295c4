# Two commands: `make run` and `make test`. Both create .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
# where torch comes from: empty = pip's configured index (PyPI's Linux wheel is the CUDA
# build); CPU only: make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# test processes (pytest-xdist; with 3 the 2-core machine here showed ~0% idle CPU);
# tests sharing a search or a cluster run in the same one
WORKERS ?= 3

.PHONY: run test bench lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/lossearch search --space search_spaces/quick.yaml --max-concurrent 2 --confirm-seeds 3

test: $(STAMP)
	$(BIN)/ruff check lossearch analysis tests benchmarks
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup --durations=15 tests

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check lossearch analysis tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
