"""Production: DEBUG always off, HTTPS only, secrets required from the environment."""

from django.core.exceptions import ImproperlyConfigured

from config.env import env

from .base import *  # noqa: F403
from .base import HEADROOM_FIELD_ENCRYPTION_KEYS, SECRET_KEY
from .security import assert_secure

DEBUG = False
EMAIL_BACKEND = env.str("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")

SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes and scrapes inside the network
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
HEADROOM_ALLOW_PRIVATE_UPSTREAMS = False
# The offline demo (its provider, its world, its published API key) is local settings' alone.
if env.bool("HEADROOM_DEMO_PROVIDER", default=False):
    raise ImproperlyConfigured("HEADROOM_DEMO_PROVIDER is for local settings only: production never serves the demo.")
HEADROOM_DEMO_PROVIDER = False

# One JSON object per line, for a log pipeline: the gateway's line per request carries request_id,
# endpoint, route, provider, status and duration_ms as fields (pool/metrics.py).
LOGGING["handlers"]["console"]["formatter"] = "json"  # noqa: F405

assert_secure(debug=DEBUG, secret_key=SECRET_KEY, encryption_keys=HEADROOM_FIELD_ENCRYPTION_KEYS)
