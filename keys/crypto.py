"""Encryption and fingerprints of provider secrets.

- Encryption: `MultiFernet` over `settings.HEADROOM_FIELD_ENCRYPTION_KEYS` (newest first): new
  ciphertext always uses the first key, decryption tries each. A secret that none of the configured
  keys opens raises `SecretDecryptError`: it fails closed and never hands back ciphertext.
  `manage.py rotate_encryption_keys` re-encrypts every stored secret under the first key, after
  which older keys can be dropped from the list.
- Fingerprint: HMAC-SHA256 of the secret under a key derived from `SECRET_KEY` (Django's
  `salted_hmac` with a purpose-specific salt). Why SECRET_KEY and not the Fernet keys: the
  fingerprint must stay the same while the Fernet key list rotates, otherwise the uniqueness check
  would miss a secret enrolled before the rotation. A database dump alone therefore does not let
  anyone confirm a guessed secret. If SECRET_KEY itself changes, `rotate_encryption_keys`
  recomputes every fingerprint as it re-encrypts.
"""

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac

FINGERPRINT_SALT = "headroom.keys.secret_fingerprint.v1"
NO_ENCRYPTION_KEYS = "HEADROOM_FIELD_ENCRYPTION_KEYS is empty: provider secrets cannot be stored or read."
DECRYPT_FAILED = "The stored provider secret cannot be decrypted with the configured keys."


class SecretDecryptError(Exception):
    """A stored secret no configured key can open. The message names no secret or ciphertext."""


@functools.lru_cache(maxsize=4)
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])


def _keys() -> tuple[str, ...]:
    keys = tuple(k for k in settings.HEADROOM_FIELD_ENCRYPTION_KEYS if k)
    if not keys:
        raise ImproperlyConfigured(NO_ENCRYPTION_KEYS)
    return keys


def _fernet() -> MultiFernet:
    return _multi_fernet(_keys())


def encrypt_secret(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(ciphertext: str) -> str:
    if not ciphertext:
        raise SecretDecryptError(DECRYPT_FAILED)
    return _decrypt(ciphertext, _keys())


@functools.lru_cache(maxsize=1024)
def _decrypt(ciphertext: str, keys: tuple[str, ...]) -> str:
    """Decrypt once per ciphertext and key set in a process: the gateway needs a key's secret on
    every request, and verifying and decrypting the Fernet token each time was a visible share of its
    CPU. The plain secret is in this process's memory for every call anyway; a changed key set (a
    rotation) misses the cache, and a scrubbed key has no ciphertext."""
    try:
        return _multi_fernet(keys).decrypt(ciphertext.encode()).decode()
    except (InvalidToken, UnicodeError, ValueError, TypeError):
        raise SecretDecryptError(DECRYPT_FAILED) from None


def secret_fingerprint(secret: str) -> str:
    return salted_hmac(FINGERPRINT_SALT, secret, algorithm="sha256").hexdigest()
