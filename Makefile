# `make run` installs and starts the app; `make test` installs everything and runs all tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench install install-test

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt

install-test: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt

run: install
	$(BIN)/python app.py

test: install-test
	$(BIN)/python -m ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: install-test
	$(BIN)/python -m ruff check .

bench: install-test
	$(BIN)/python bench/detect.py
