"""ASGI entry point: the `/v1` gateway in front of Django (see pool.gateway for why)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402

from pool.gateway import Gateway  # noqa: E402  (needs the apps loaded by get_asgi_application)

application = Gateway(django_application)
if settings.HEADROOM_DEMO_PROVIDER:  # local settings only: production settings refuse it
    from demo.provider import DemoProvider

    application = DemoProvider(application)
