# Development tasks. Every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
FLASK := $(PY) -m flask --app app

.PHONY: setup run test test-coverage format lint check db-setup db-reset db-migrate bench screenshots fuzz clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## install everything and prepare the embedded database
	$(PY) -m sentinel_cp.cli setup

run: $(STAMP)  ## the whole embedded system on http://127.0.0.1:$${PORT:-4000}/
	$(PY) app.py

test: $(STAMP)  ## the whole suite (PostgreSQL/Redis/Chromium tests skip without them, fail under CI=true)
	$(PY) -m pytest $(PYTEST_ARGS)

test-coverage: $(STAMP)
	$(PY) -m pytest --cov --cov-report=term-missing:skip-covered --cov-report=html $(PYTEST_ARGS)

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

lint: $(STAMP)  ## ruff (lint + format check) and mypy on the domain
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

check: lint test

db-setup: $(STAMP)  ## migrate to head, create the first admin and project
	$(PY) -m sentinel_cp.cli setup

db-migrate: $(STAMP)  ## apply pending migrations
	$(FLASK) db upgrade

db-reset: $(STAMP)  ## downgrade to empty, then db-setup (destroys data)
	$(FLASK) db downgrade base
	$(PY) -m sentinel_cp.cli setup

bench: $(STAMP)  ## benchmarks -> bench/results.json (QUICK=1 for a short run; installs wrk if missing)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } \
		|| { echo "bench needs wrk (Debian package wrk)"; exit 1; }
	QUICK=$(QUICK) $(PY) bench/run.py

FUZZ_EXAMPLES ?= 200
fuzz: $(STAMP)  ## schemathesis on every API operation, both backends (FUZZ_EXAMPLES per operation; FUZZ_SEED)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_fuzz_api.py -k every_operation $(PYTEST_ARGS)

screenshots: $(STAMP)  ## docs/screenshots/*.png from a live demo in Debian's headless chromium
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache htmlcov .coverage
