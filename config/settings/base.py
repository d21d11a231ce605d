"""All of Headroom's settings. The other modules only change defaults.

The database is PostgreSQL (psycopg 3, with Django's connection pool), named by
DATABASE_URL. Without REDIS_URL Headroom uses a local-memory cache and runs
Celery tasks in-process (eager); with it, Redis for both.
"""

from django.core.exceptions import ImproperlyConfigured

from config.env import BASE_DIR, env

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# Field encryption for provider secrets: a comma-separated list of Fernet keys,
# newest first. Decryption tries each; encryption always uses the first.
HEADROOM_FIELD_ENCRYPTION_KEYS = env.list("HEADROOM_FIELD_ENCRYPTION_KEYS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "allauth",
    "allauth.account",
    "allauth.headless",
    # The audit trail of operator decisions (core/audit.py): trigger-written history with the acting user.
    "pgtrigger",
    "pghistory",
    "health_check",  # /readyz (core/health.py)
    "core",
    "accounts",
    "billing",
    "keys",
    "pool",
    "exchange",
    "payouts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before SessionMiddleware: one sign-in step per session at a time, session save included.
    "core.middleware.OneSignInStepPerSessionMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "core.middleware.HostileInputMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Attaches the acting user and URL to audited writes (core/audit.py). /v1 never reaches Django's
    # middleware (config/asgi.py), so the gateway's hot path does not pay for it.
    "pghistory.middleware.HistoryMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "billing.context_processors.balances",
            ],
            "builtins": ["billing.templatetags.money", "template_partials.templatetags.partials"],
        },
    }
]

# --- Database -----------------------------------------------------------------
# PostgreSQL only. `make run` and `make test` set DATABASE_URL to the embedded server
# (scripts/embedded.py) when it is unset; anything else must name its server.
if not env.str("DATABASE_URL", default=""):
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. Headroom runs on PostgreSQL only: set DATABASE_URL, or run through "
        "`make run` / `make test` or `python scripts/embedded.py COMMAND`, which start the embedded server."
    )
DATABASES = {"default": env.db("DATABASE_URL")}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...).")
# CONN_MAX_AGE does not reuse connections under ASGI (PERFORMANCE.md):
# Django 5.1+'s psycopg pool does.
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
    "min_size": env.int("DJANGO_DB_POOL_MIN", default=2),
    "max_size": env.int("DJANGO_DB_POOL_MAX", default=20),
    "timeout": 10,
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery ---------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("HEADROOM_CELERY_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
# Every task is idempotent, so a task whose worker died under it runs again rather than being lost:
# a killed child process requeues its task at once; a whole worker killed leaves its task unacked in
# Redis, redelivered once the visibility timeout has passed (it must exceed the longest task).
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("HEADROOM_CELERY_VISIBILITY_TIMEOUT", default=3600)}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Periodic tasks (seconds), run by `celery beat` (the Procfile's `beat`, under `make run` too). Other apps
# add their entries here too. HEADROOM_PERIODIC_SCALE multiplies every interval: below 1 to watch the
# background work happen (tests, demos), never needed in production.
HEADROOM_PERIODIC_SCALE = env.float("HEADROOM_PERIODIC_SCALE", default=1.0)
CELERY_BEAT_SCHEDULE: dict = {
    name: {"task": task, "schedule": seconds * HEADROOM_PERIODIC_SCALE}
    for name, task, seconds in (
        ("keys-reverify-exchange-balances", "keys.tasks.provider_keys_reverify_exchange_task", 30 * 60),
        ("keys-probe-paused", "keys.tasks.provider_keys_probe_paused_task", 60),
        ("keys-sweep-disabling-and-pending", "keys.tasks.provider_keys_sweep_task", 60),
        ("billing-release-stale-holds", "billing.tasks.stale_holds_release_task", 10 * 60),
        ("core-delete-expired-idempotency-keys", "core.tasks.idempotency_records_delete_expired_task", 60 * 60),
    )
}

# --- Auth ---------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_EMAIL_VERIFICATION_BY_CODE_ENABLED = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_GET = False
# Login rate limits (allauth's defaults, for members and the admin alike): 30 login POSTs a minute per
# client IP (then 429), 10 failures a minute per IP and 5 per account in 5 minutes (then refused, even
# with the right password). The client IP is REMOTE_ADDR unless a proxy is trusted: behind N proxies,
# the Nth address from the right of X-Forwarded-For; or one header the proxy sets (X-Real-IP, CF-Connecting-IP).
ALLAUTH_TRUSTED_PROXY_COUNT = env.int("DJANGO_TRUSTED_PROXY_COUNT", default=0)
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = env.str("DJANGO_TRUSTED_CLIENT_IP_HEADER", default="") or None
HEADLESS_CLIENTS = ("app", "browser")
HEADLESS_SERVE_SPECIFICATION = False

EMAIL_BACKEND = env.str("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DJANGO_DEFAULT_FROM_EMAIL", default="Headroom <noreply@headroom.local>")
EMAIL_HOST = env.str("DJANGO_EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("DJANGO_EMAIL_PORT", default=25)

# --- API ----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so that an anonymous request gets 401 + WWW-Authenticate: Bearer.
        "accounts.authentication.ApiKeyAuthentication",
        "allauth.headless.contrib.rest_framework.authentication.XSessionTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # An API key may do only what its scopes allow (accounts.permissions: a view names them).
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.permissions.ApiKeyScopes",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    # One error body for every endpoint: {"detail", "code"} (+ "fields" for validation errors).
    "EXCEPTION_HANDLER": "core.exceptions.api_exception_handler",
    # Per member, per client IP when anonymous, and stricter on writes that move money or mint API
    # keys (a view's throttle_scope); counted in the default cache, shared by every worker when it is
    # Redis (core.throttling).
    "DEFAULT_THROTTLE_CLASSES": [
        "core.throttling.MemberRateThrottle",
        "core.throttling.AnonymousRateThrottle",
        "core.throttling.SensitiveWriteThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "member": env.str("HEADROOM_THROTTLE_MEMBER", default="600/minute"),
        "anon": env.str("HEADROOM_THROTTLE_ANON", default="120/minute"),
        "money": env.str("HEADROOM_THROTTLE_MONEY", default="20/minute"),
        "api_keys": env.str("HEADROOM_THROTTLE_API_KEYS", default="20/minute"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Headroom management API",
    "DESCRIPTION": "Manage gateway API keys, provider keys, balances and payouts. "
    "The OpenAI-compatible gateway itself lives under /v1.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
}

# --- Static, i18n, security -----------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # Production's (config/settings/production.py): one JSON object a line, `extra` fields included.
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
}

# --- Headroom -----------------------------------------------------------------
HEADROOM_SIGNUP_CREDIT = "2.00"
# A withdrawal needs a sign-in (or allauth reauthentication) this recent, in the session that asks.
HEADROOM_MONEY_SIGN_IN_SECONDS = env.int("HEADROOM_MONEY_SIGN_IN_SECONDS", default=300)
# How long an Idempotency-Key is remembered (seconds); a retry after that is a new request.
HEADROOM_IDEMPOTENCY_KEY_TTL = env.int("HEADROOM_IDEMPOTENCY_KEY_TTL", default=24 * 60 * 60)

# keys (issue 3) settings go below this line.
# Error pages hide variables and POST fields marked sensitive (provider secrets) even with DEBUG on.
DEFAULT_EXCEPTION_REPORTER_FILTER = "keys.reporting.SecretSafeExceptionReporterFilter"
# The offline demo provider (demo/provider.py) and its world (`seed_demo`): local settings only.
HEADROOM_DEMO_PROVIDER = False
HEADROOM_DEMO_WORD_SECONDS = env.float("HEADROOM_DEMO_WORD_SECONDS", default=0.04)
# The provider catalogue file (empty: keys/providers.toml).
HEADROOM_PROVIDERS_FILE = env.str("HEADROOM_PROVIDERS_FILE", default="")
# Let operators point providers at loopback/private addresses and plain http (tests, local demos).
HEADROOM_ALLOW_PRIVATE_UPSTREAMS = env.bool("HEADROOM_ALLOW_PRIVATE_UPSTREAMS", default=False)
HEADROOM_PAUSE_AFTER_429S = env.int("HEADROOM_PAUSE_AFTER_429S", default=3)
HEADROOM_EXHAUST_AFTER_FAILURES = env.int("HEADROOM_EXHAUST_AFTER_FAILURES", default=5)
HEADROOM_EXCHANGE_MIN_BALANCE = "0.10"
# USD value of one unit of a provider balance currency (DeepSeek/Moonshot/SiliconFlow China report CNY).
HEADROOM_FX_RATES = {"CNY": env.str("HEADROOM_FX_CNY_USD", default="0.14")}
HEADROOM_VERIFY_TIMEOUT_SECONDS = 10
# A PAUSED key without a Retry-After is probed this long after it was paused; a failed probe waits longer.
HEADROOM_PROBE_PAUSED_AFTER = 60
HEADROOM_PROBE_BACKOFF_SECONDS = 300
# A DISABLING key is retired after this long even if a crashed process left its in-flight count up.
HEADROOM_DISABLING_TIMEOUT = 900
# A PENDING key whose verification was lost or gave up is verified again after this long.
HEADROOM_PENDING_RECHECK_AFTER = 600

# exchange and payouts (issue 5) settings go below this line.
# The payout rate (percent of settled cost) while no global rule row exists;
# operators set the real one on the admin's "Global payout rate" page.
HEADROOM_DEFAULT_PAYOUT_RATE = env.str("HEADROOM_DEFAULT_PAYOUT_RATE", default="90.00")
HEADROOM_CONVERSION_MINIMUM = "0.10"
HEADROOM_WITHDRAWAL_MINIMUM = "10.00"

# pool (issue 4) settings go below this line.
HEADROOM_MAX_BODY_BYTES = env.int("HEADROOM_MAX_BODY_BYTES", default=4 * 1024 * 1024)
HEADROOM_UPSTREAM_CONNECT_TIMEOUT = env.float("HEADROOM_UPSTREAM_CONNECT_TIMEOUT", default=10.0)
# Longest silence allowed from a provider: before its first byte, and between chunks.
HEADROOM_UPSTREAM_READ_TIMEOUT = env.float("HEADROOM_UPSTREAM_READ_TIMEOUT", default=120.0)
HEADROOM_MAX_UPSTREAM_ATTEMPTS = env.int("HEADROOM_MAX_UPSTREAM_ATTEMPTS", default=3)
HEADROOM_RATE_LIMIT_PER_MINUTE = env.int("HEADROOM_RATE_LIMIT_PER_MINUTE", default=1200)
# Unrevoked gateway API keys one member may hold (accounts.services.api_key_create refuses with 409 past it).
HEADROOM_MAX_API_KEYS = env.int("HEADROOM_MAX_API_KEYS", default=50)
# The output limit of a model whose ProviderModel.max_output_tokens is empty: bounds the cap held and forwarded.
HEADROOM_DEFAULT_MAX_TOKENS = env.int("HEADROOM_DEFAULT_MAX_TOKENS", default=4096)
# `n` above this is refused (400); each of the n completions is held for (README "Money integrity").
HEADROOM_MAX_N = env.int("HEADROOM_MAX_N", default=8)
# Prompt tokens held for an image part: OpenAI's documented worst case for a high/auto-detail image
# (85 + 8 tiles × 170), as its size behind a URL is unknown.
HEADROOM_IMAGE_TOKENS = env.int("HEADROOM_IMAGE_TOKENS", default=1445)
HEADROOM_SSE_KEEPALIVE_SECONDS = env.float("HEADROOM_SSE_KEEPALIVE_SECONDS", default=15.0)
HEADROOM_POOL_REWARD_PERCENT = "5"
HEADROOM_BYOK_FREE_REQUESTS = 1_000_000
HEADROOM_BYOK_FEE_PERCENT = "5"
# An open balance hold older than this belongs to a request that died with its process.
HEADROOM_STALE_HOLD_SECONDS = env.int("HEADROOM_STALE_HOLD_SECONDS", default=3600)
# The gateway's own PostgreSQL pool (pool.hotpath.db), next to Django's: connections per worker process.
HEADROOM_GATEWAY_DB_POOL_MIN = env.int("HEADROOM_GATEWAY_DB_POOL_MIN", default=2)
HEADROOM_GATEWAY_DB_POOL_MAX = env.int("HEADROOM_GATEWAY_DB_POOL_MAX", default=4)
# How long a gateway request waits for a pooled connection (all busy, or the database unreachable and
# the pool reconnecting) before it answers 503 database_unavailable.
HEADROOM_GATEWAY_DB_WAIT_SECONDS = env.float("HEADROOM_GATEWAY_DB_WAIT_SECONDS", default=5.0)
# Server-side prepared statements after this many uses of a statement; -1 turns them off (PgBouncer
# in transaction mode does not keep them).
HEADROOM_DB_PREPARE_THRESHOLD = env.int("HEADROOM_DB_PREPARE_THRESHOLD", default=5)
