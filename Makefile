# Two commands do everything (see README "Quick start"):
#   make run    create .venv, install pinned dependencies, generate the sample data, run the whole pipeline
#   make test   create .venv, install pinned dependencies (+ test tools), run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test sample-data benchmark clean stack-up stack-down stack-status test-prod

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

# The local stand-in of a production stack (scripts/prod_stack.sh): 3-node Ray, PostgreSQL, Redis, an
# S3-compatible server and an MLflow server, all on loopback. `source /tmp/medallion-stack/env` after up.
stack-up: $(STAMP)
	scripts/prod_stack.sh up

stack-down:
	scripts/prod_stack.sh down

stack-status:
	scripts/prod_stack.sh status

# Only the prod-profile tests (they start the stack if it is not up, and stop it again afterwards).
test-prod: $(STAMP)
	$(BIN)/python -m pytest -m prod $(PYTEST_ARGS)

# The end-to-end benchmark suite (README "Benchmarks"): 1M and 10M transactions against DuckDB and Feast's
# materialize, 100-run manifest growth, a 30M run for its peak memory. Results in benchmarks/results/.
benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.suite $(ARGS)

clean:
	rm -rf $(VENV) data
