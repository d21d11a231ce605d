"""Settings come from the environment, and production refuses an insecure one.

Each case starts a fresh interpreter, because settings are read once per process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "q8Vz1mXk3rT9wLp2sYd7hJf4nBc6gKe0aUo5iRt8yWx2vZm1lQs"
GOOD_FERNET = Fernet.generate_key().decode()


# Settings are read without connecting: any PostgreSQL URL does.
SOME_DATABASE = "postgres://u@db.internal:5432/headroom"


def _run(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "HEADROOM_", "DATABASE_URL", "REDIS_URL"))}
    clean["DATABASE_URL"] = SOME_DATABASE
    clean.update({k: v for k, v in env.items() if v is not None})
    for name in [k for k, v in env.items() if v is None]:
        clean.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def _setup_production(**env) -> subprocess.CompletedProcess:
    # cwd has no .env in a fresh clone; point the env reader away from any local one.
    return _run(
        "import django; django.setup(); print('started')",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        **env,
    )


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"HEADROOM_FIELD_ENCRYPTION_KEYS": GOOD_FERNET}, "DJANGO_SECRET_KEY is empty"),
        (
            {"DJANGO_SECRET_KEY": "django-insecure-" + "x" * 50, "HEADROOM_FIELD_ENCRYPTION_KEYS": GOOD_FERNET},
            "placeholder",
        ),
        ({"DJANGO_SECRET_KEY": "short", "HEADROOM_FIELD_ENCRYPTION_KEYS": GOOD_FERNET}, "at least 50"),
        ({"DJANGO_SECRET_KEY": GOOD_SECRET}, "HEADROOM_FIELD_ENCRYPTION_KEYS is empty"),
        ({"DJANGO_SECRET_KEY": GOOD_SECRET, "HEADROOM_FIELD_ENCRYPTION_KEYS": "not-a-key"}, "not a valid Fernet key"),
    ],
)
def test_production_refuses_insecure_configuration(env, reason, tmp_path):
    result = _setup_production(DJANGO_ENV_FILE=str(tmp_path / "none"), **env)
    assert result.returncode != 0
    assert "Refusing to start with DEBUG off" in result.stderr
    assert reason in result.stderr
    assert "started" not in result.stdout


def test_local_settings_with_debug_off_refuse_too(tmp_path):
    result = _run(
        "import django; django.setup(); print('started')",
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DJANGO_DEBUG="false",
        DJANGO_ENV_FILE=str(tmp_path / "none"),
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is empty" in result.stderr


def test_production_check_deploy_is_clean(tmp_path):
    result = _run(
        "import sys; from django.core.management import execute_from_command_line;"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY=GOOD_SECRET,
        HEADROOM_FIELD_ENCRYPTION_KEYS=GOOD_FERNET,
        DJANGO_ALLOWED_HOSTS="headroom.example.com",
        DJANGO_ENV_FILE=str(tmp_path / "none"),
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_without_redis_the_cache_is_local_and_tasks_eager(tmp_path):
    result = _run(
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'], s.CELERY_TASK_ALWAYS_EAGER)",
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DJANGO_SECRET_KEY=GOOD_SECRET,
        HEADROOM_FIELD_ENCRYPTION_KEYS=GOOD_FERNET,
        DJANGO_ENV_FILE=str(tmp_path / "none"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "django.core.cache.backends.locmem.LocMemCache",
        "True",
    ]


@pytest.mark.parametrize("module", ["config.settings.local", "config.settings.production"])
def test_without_a_database_url_settings_refuse_and_say_how_to_start_one(module, tmp_path):
    result = _run(
        "import django; django.setup(); print('started')",
        DJANGO_SETTINGS_MODULE=module,
        DJANGO_SECRET_KEY=GOOD_SECRET,
        HEADROOM_FIELD_ENCRYPTION_KEYS=GOOD_FERNET,
        DJANGO_ENV_FILE=str(tmp_path / "none"),
        DATABASE_URL=None,
    )
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
    assert "scripts/embedded.py" in result.stderr


def test_a_database_other_than_postgresql_is_refused(tmp_path):
    result = _run(
        "import django; django.setup(); print('started')",
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DJANGO_SECRET_KEY=GOOD_SECRET,
        HEADROOM_FIELD_ENCRYPTION_KEYS=GOOD_FERNET,
        DJANGO_ENV_FILE=str(tmp_path / "none"),
        DATABASE_URL="mysql://u@db.internal:3306/headroom",
    )
    assert result.returncode != 0
    assert "DATABASE_URL must point at PostgreSQL" in result.stderr


def test_with_service_urls_it_uses_postgres_and_redis(tmp_path):
    result = _run(
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'], s.CELERY_TASK_ALWAYS_EAGER,"
        " s.CELERY_BROKER_URL)",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY=GOOD_SECRET,
        HEADROOM_FIELD_ENCRYPTION_KEYS=GOOD_FERNET,
        DATABASE_URL="postgres://u@db.internal:5432/headroom",
        REDIS_URL="redis://cache.internal:6379/0",
        DJANGO_ENV_FILE=str(tmp_path / "none"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "django.core.cache.backends.redis.RedisCache",
        "False",
        "redis://cache.internal:6379/0",
    ]


@pytest.mark.parametrize(("url", "expected"), [(SOME_DATABASE, "5"), (SOME_DATABASE + "?connect_timeout=2", "2")])
def test_a_new_database_connection_waits_five_seconds_unless_the_url_says(url, expected, tmp_path):
    # libpq's own default waits for ever on a host that does not answer: an outage would hang requests.
    result = _run(
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.DATABASES['default']['OPTIONS']['connect_timeout'])",
        DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL=url, DJANGO_ENV_FILE=str(tmp_path / "none"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
