"""Celery app. Without REDIS_URL, tasks run eagerly in-process (settings).

The default settings module is production, as for the ASGI app: this module
is imported first whenever anything under `config` is, so a local default here
would win over asgi.py's. `manage.py` and `make run` pick local explicitly.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

app = Celery("headroom")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
