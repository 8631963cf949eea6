# The commands that work on a fresh machine: `make demo`, `make check` (the edit loop) and
# `make test` (everything; what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo drill check test test-all lint typecheck bench flood soak clean system-deps docs vendor-ui docs-screenshots

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

## The edit-loop tier: unit and in-process tests (the CLI in a subprocess included), no external
## service, no slow test; under 90 s on 2 cores. `services` is set by tests/conftest.py on every
## test that uses a PostgreSQL, SoftHSM, moto, OpenBao, Azure or browser fixture.
## lint-imports runs once import-linter is installed and pyproject.toml has its contracts.
LINT_IMPORTS = $(if $(and $(wildcard $(VENV)/bin/lint-imports),$(shell grep -s '^\[tool.importlinter\]' pyproject.toml)),$(VENV)/bin/lint-imports)
check: $(VENV)/.test
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile -m "not services and not slow" tests
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(LINT_IMPORTS)

## The whole suite (what CI runs): unit tests and tests against real services; `slow` stays out
## (`make soak`). pytest-xdist: one worker per core, a test file stays on one worker; PostgreSQL,
## moto and OpenBao are started once per session and shared by the workers (tests/shared_service.py);
## CLI commands fork from an interpreter that imported the CLI: NEBULA_TEST_CLI_FORK=0 starts one each.
test: $(VENV)/.test system-deps
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile -m "not slow" tests
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
	NEBULA_SCREENSHOTS=docs/img $(PY) -m pytest -q -p no:cacheprovider tests/test_console_browser.py tests/test_console_layout.py

## ruff, and the layer contracts of docs/architecture.md (pyproject.toml [tool.importlinter]).
lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.test
	$(VENV)/bin/mypy

## Benchmarks beside the alternatives; writes docs/benchmarks.md.
bench: $(VENV)/.bench system-deps
	$(PY) -m benchmarks --aio --server

## Issue 28's flood, measured: serve with its defaults on SQLite, an authorised reader alone for 10 s, then
## during wrk -c16 -d10s on /v1/x/<65,000 a> without a token; store bytes added, 429s, events audited, the
## reader's rates. JSON in docs/flood.json, the table in docs/server.md (Limits). Run it on a quiet machine.
flood: $(VENV)/.test system-deps
	$(PY) -m benchmarks.flood --seconds 10 --json docs/flood.json --docs docs/server.md

## Long runs kept out of `make check` and `make test` (crash-injection loops, soak, the wheel build).
soak: $(VENV)/.test system-deps
	NEBULA_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider -m slow tests

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info
