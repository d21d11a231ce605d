"""Refuse to start an insecure deployment.

Called at the end of every settings module that can run with DEBUG off, so a
missing or placeholder secret stops the process before it serves anything.
"""

from django.core.exceptions import ImproperlyConfigured

MIN_SECRET_KEY_LENGTH = 50
INSECURE_SECRET_PREFIXES = ("django-insecure", "change-me", "changeme", "secret", "insecure")


def secret_key_problem(secret_key: str) -> str | None:
    if not secret_key:
        return "DJANGO_SECRET_KEY is empty"
    if secret_key.lower().startswith(INSECURE_SECRET_PREFIXES):
        return "DJANGO_SECRET_KEY is a placeholder value"
    if len(secret_key) < MIN_SECRET_KEY_LENGTH or len(set(secret_key)) < 5:
        return f"DJANGO_SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} random characters"
    return None


def encryption_keys_problem(keys: list[str]) -> str | None:
    from cryptography.fernet import Fernet

    if not keys:
        return "HEADROOM_FIELD_ENCRYPTION_KEYS is empty: provider secrets could not be encrypted"
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            return f"HEADROOM_FIELD_ENCRYPTION_KEYS entry {position} is not a valid Fernet key"
    return None


def assert_secure(*, debug: bool, secret_key: str, encryption_keys: list[str]) -> None:
    if debug:
        return
    for problem in (secret_key_problem(secret_key), encryption_keys_problem(encryption_keys)):
        if problem:
            raise ImproperlyConfigured(f"Refusing to start with DEBUG off: {problem}.")
