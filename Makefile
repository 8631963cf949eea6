# The two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo drill test test-all lint typecheck bench soak clean system-deps

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.base: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q -e '.[all,test,docs]'
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(PIP) install -q -e '.[all,test,bench]'
	touch $@

## The main job on the embedded default (SQLite + a local key file), in a temp folder.
demo: $(VENV)/.base
	$(VENV)/bin/nebula-credential demo

## Disaster-recovery drill on a throwaway store: backup, two rotations with cleanup, restore, read back.
drill: $(VENV)/.base
	$(PY) -m nebula_credential.drill

## System packages the service-backed tests need (softhsm2, promtool, PostgreSQL 15).
system-deps:
	bash scripts/ensure-system-deps.sh

## The whole suite: unit tests and tests against real services started by the session.
test: $(VENV)/.test system-deps
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/mypy

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)

typecheck: $(VENV)/.test
	$(VENV)/bin/mypy

## Benchmarks beside the alternatives; writes docs/benchmarks.md.
bench: $(VENV)/.bench system-deps
	$(PY) -m benchmarks

## Long runs kept out of the suite (crash-injection loops, soak).
soak: $(VENV)/.test system-deps
	NEBULA_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider -m slow tests

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
