# Developer entry points. Environment variables (DATABASE_URL, CELERY_BROKER_URL, STACKYARD_*) pass
# through to every command unchanged: without them you get the embedded default (SQLite + filesystem broker).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint clean distclean

install: $(STAMP)

# pip runs again only when a requirements file (or pyproject.toml) is newer than the stamp. The last
# step installs the `stackyard` CLI (package cli/, editable) into the venv: .venv/bin/stackyard.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

run: install
	$(VENV)/bin/python manage.py runstack --host $(HOST) --port $(PORT)

test: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# ruff, and the import-linter layers contract in pyproject.toml (apps import only downward).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Keeps .venv and the data dir (.stackyard holds your database); see distclean.
clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis staticfiles
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
