# The two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo drill test test-all lint typecheck bench soak clean system-deps docs vendor-ui docs-screenshots

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

## The whole suite: unit tests and tests against real services started by the session
## (pytest-xdist: one worker per core, each with its own services; a test file stays on one worker;
## CLI commands fork from an interpreter that imported the CLI: NEBULA_TEST_CLI_FORK=0 starts one each).
test: $(VENV)/.test system-deps
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile tests
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(MKDOCS_BUILD)

## The documentation site (mkdocs-material) into site/; --strict fails on a broken link or a page missing from the nav.
MKDOCS_BUILD = NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site
docs: $(VENV)/.test
	$(MKDOCS_BUILD)

## Re-fetch the console's front-end libraries (htmx, uPlot) from the npm registry into the package.
vendor-ui:
	bash scripts/vendor-ui.sh

## Refresh the console screenshots in docs/img/ (the browser test writes them).
docs-screenshots: $(VENV)/.test system-deps
	NEBULA_SCREENSHOTS=docs/img $(PY) -m pytest -q -p no:cacheprovider tests/test_console_browser.py

## ruff, and the layer contracts of docs/architecture.md (pyproject.toml [tool.importlinter]).
lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.test
	$(VENV)/bin/mypy

## Benchmarks beside the alternatives; writes docs/benchmarks.md.
bench: $(VENV)/.bench system-deps
	$(PY) -m benchmarks --aio --server

## Long runs kept out of the suite (crash-injection loops, soak).
soak: $(VENV)/.test system-deps
	NEBULA_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider -m slow tests

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info
