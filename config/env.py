"""One environment reader for every settings module.

Settings come from the process environment; a `.env` file at the project root
(written by `make run` on first use, never committed) fills in what the
environment leaves unset. `DJANGO_ENV_FILE` names another file.
"""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(os.environ.get("DJANGO_ENV_FILE", BASE_DIR / ".env"), overwrite=False)
