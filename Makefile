# Mark: `make run` starts the demo control plane, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.stamp-run
TEST_STAMP := $(VENV)/.stamp-test
# A third-party KServe v2 server for tests/test_third_party_backend.py, in its own venv: Seldon
# MLServer pins a protobuf that conflicts with ours. Installed once (stamp), from PyPI only.
MLSERVER_VENV  := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.stamp
MLSERVER_PINS  := mlserver==1.7.1 mlserver-sklearn==1.7.1 scikit-learn==1.9.1 numpy==2.4.6 \
                  pandas==3.1.1 scipy==1.17.1 joblib==1.6.0
# the slowest tests are printed: the suite has a 15-minute budget on 2 cores. Two workers
# (pytest-xdist): most tests wait on subprocess boots, sockets and sleeps rather than compute,
# and each worker has a PostgreSQL database of its own (tests/conftest.py)
PYTEST_ARGS ?= -n 2 --durations=20

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/mark serve --demo $(ARGS)

$(MLSERVER_STAMP):
	$(PYTHON) -m venv $(MLSERVER_VENV)
	echo '*' > $(MLSERVER_VENV)/.gitignore
	$(MLSERVER_VENV)/bin/pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/pip install --quiet $(MLSERVER_PINS)
	touch $@

test: $(TEST_STAMP) $(MLSERVER_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(TEST_STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
