# `make run` installs and starts the app; `make test` installs everything and runs all tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench install install-test browser screenshots

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt

install-test: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt

run: install
	$(BIN)/python app.py

test: install-test browser
	$(BIN)/python -m ruff check --no-cache .
	$(BIN)/hadolint Dockerfile
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: install-test
	$(BIN)/python -m ruff check --no-cache .
	$(BIN)/hadolint Dockerfile

# The browser test drives Debian's chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || { echo "install Debian's chromium (apt-get install chromium) for the browser test"; exit 1; }

# Regenerates docs/screenshots/ from the browser tests (the test suite itself writes only to temp folders).
screenshots: install-test browser
	SCREENSHOTS_DIR=docs/screenshots HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/test_browser.py tests/test_ui_flows.py tests/test_ui_capacity.py

bench: install-test
	$(BIN)/python bench/detect.py
