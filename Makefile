# Two commands do everything (see README "Quick start"):
#   make run    create .venv, install pinned dependencies, generate the sample data, run the whole pipeline
#   make test   create .venv, install pinned dependencies (+ test tools), run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test sample-data benchmark clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

sample-data: $(STAMP)
	$(BIN)/medallion sample-data $(ARGS)

run: $(STAMP)
	$(BIN)/medallion sample-data $(ARGS)
	$(BIN)/medallion run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.gold_build $(ARGS)

clean:
	rm -rf $(VENV) data
