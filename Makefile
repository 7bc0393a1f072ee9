# Two commands on a fresh Linux machine with Python 3.11:
#   make demo   - set up, then run the whole flow on the embedded default
#   make test   - set up, install and start what the tests need, run the whole suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs on two workers (pytest-xdist; tests/conftest.py keeps each module on one worker).
# TEST_WORKERS=0 runs it in this process, one test after another.
TEST_WORKERS ?= 2

.PHONY: venv demo test system-deps lint bench clean down help lock

help:
	@echo "make demo   # run the whole flow locally (MLflow, train, gate, approve, promote, deploy, smoke test)"
	@echo "make test   # install what the tests need and run the whole suite"
	@echo "make bench  # run the benchmarks (not part of CI)"
	@echo "make down   # stop the local services started by make demo"

# The venv is current when its stamp holds the sha256 of the files it was built from. Not their
# mtimes: a checkout (CircleCI's, after restoring the cached .venv) gives them new ones, and every
# job reinstalled. A missing stamp or another hash (a changed lock) installs; the same hash skips.
VENV_FROM := requirements.lock pyproject.toml
ifneq ($(shell sha256sum $(VENV_FROM) 2>&1),$(shell cat $(STAMP) 2>/dev/null))
.PHONY: $(STAMP)
endif
$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	sha256sum $(VENV_FROM) > $(STAMP)

venv: $(STAMP)

# OpenSSH server, rsync, shellcheck and PostgreSQL are real services/tools the tests use.
system-deps:
	@bash scripts/system-deps.sh

demo: venv
	$(BIN)/mlops demo $(DEMO_ARGS)

down:  # no set-up first: stopping needs only what `make demo` installed
	@if [ -x $(BIN)/mlops ]; then $(BIN)/mlops down; else echo "nothing to stop: $(BIN)/mlops is not installed"; fi

# ruff (pyproject.toml [tool.ruff]) also runs first in `make test`; shellcheck and the CircleCI schema
# run inside the suite (tests/test_shell_scripts.py, tests/test_circleci_config.py).
lint: venv system-deps
	$(BIN)/ruff check .
	shellcheck serving_host/*.sh scripts/*.sh .ci/run
	$(BIN)/check-jsonschema --builtin-schema vendor.circle-ci .circleci/config.yml

test: venv system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra --junitxml=test-results/junit.xml -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: venv system-deps
	$(BIN)/python -m benchmarks.run_all

clean:
	-$(BIN)/mlops down 2>/dev/null
	rm -rf $(VENV) .mlops test-results .pytest_cache

# Re-pin the whole dependency tree after changing pyproject.toml.
lock:
	rm -rf /tmp/mlops-lock-venv && $(PYTHON) -m venv /tmp/mlops-lock-venv
	/tmp/mlops-lock-venv/bin/python -m pip install --quiet -e ".[test]"
	{ echo "# Full pinned dependency tree (pip freeze of a fresh install of pyproject.toml [test])."; \
	  echo "# Regenerate: make lock"; \
	  /tmp/mlops-lock-venv/bin/pip freeze --all | grep -v -E '^(-e |tfmodel-delivery)'; } > requirements.lock
