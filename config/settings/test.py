"""Test settings: the only module with built-in secrets, and they are throwaway."""

from config.env import env

from .base import *  # noqa: F403

DEBUG = False
SECRET_KEY = "test-only-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP"
HEADROOM_FIELD_ENCRYPTION_KEYS = [
    # Two throwaway Fernet keys: tests rotate between them.
    "G0PTAR4DKyDOrDP3qFSZCDoGH3T6N1-3bTwyYQbAwCo=",
    "zMFqiQZtWzLYpFYD4Jb3gfgVgDNC10Zt9fhI_v4C4sI=",
]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# In-process, unless a test runs the real worker and beat (tests/topology: HEADROOM_CELERY_EAGER=false).
CELERY_TASK_ALWAYS_EAGER = env.bool("HEADROOM_CELERY_EAGER", default=True)
HEADROOM_ALLOW_PRIVATE_UPSTREAMS = True
ACCOUNT_RATE_LIMITS = False
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# The demo app's command and pages, for their tests (tests/browser/test_offline_demo.py); its provider
# stays off unless a test turns HEADROOM_DEMO_PROVIDER on.
INSTALLED_APPS = [*INSTALLED_APPS, "demo"]  # noqa: F405
TEMPLATES[0]["OPTIONS"]["context_processors"] = [  # noqa: F405
    *TEMPLATES[0]["OPTIONS"]["context_processors"], "demo.context_processors.demo",  # noqa: F405
]
