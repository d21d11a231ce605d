"""Local development: DEBUG on by default and e-mail printed to the console.

Secrets still come from the environment or `.env` (which `make run` writes
once with fresh random values); nothing secret is hard-coded here.
"""

from config.env import env

from .base import *  # noqa: F403
from .base import HEADROOM_FIELD_ENCRYPTION_KEYS, INSTALLED_APPS, TEMPLATES, SECRET_KEY
from .security import assert_secure

DEBUG = env.bool("DJANGO_DEBUG", default=True)
EMAIL_BACKEND = env.str("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
HEADROOM_ALLOW_PRIVATE_UPSTREAMS = env.bool("HEADROOM_ALLOW_PRIVATE_UPSTREAMS", default=True)
# The offline demo: its provider served by this process (demo/provider.py), its world (`seed_demo`)
# and the demo member's published API key shown on every page it signs in to.
HEADROOM_DEMO_PROVIDER = env.bool("HEADROOM_DEMO_PROVIDER", default=True)
INSTALLED_APPS = [*INSTALLED_APPS, "demo"]
TEMPLATES[0]["OPTIONS"]["context_processors"] = [
    *TEMPLATES[0]["OPTIONS"]["context_processors"], "demo.context_processors.demo",
]

assert_secure(debug=DEBUG, secret_key=SECRET_KEY, encryption_keys=HEADROOM_FIELD_ENCRYPTION_KEYS)
