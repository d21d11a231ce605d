"""Re-encrypting every stored provider secret under the newest encryption key.

Operators put a new Fernet key first in HEADROOM_FIELD_ENCRYPTION_KEYS (keeping the old ones after
it), run `manage.py rotate_encryption_keys`, then drop the old keys. Each row is re-encrypted under
its own row lock, so the gateway keeps working throughout. Fingerprints are recomputed from the
plain secret at the same time (they follow SECRET_KEY, see keys.crypto).

A row that none of the configured keys can open is left exactly as it is and reported: rotation
never writes something it could not read, and such a key keeps failing closed until an operator
restores the old key or its owner re-enrols it.
"""

from dataclasses import dataclass, field

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from keys.crypto import (
    SecretDecryptError,
    decrypt_secret,
    encrypt_secret,
    secret_fingerprint,
)
from keys.models import ProviderKey

BATCH_SIZE = 200
ROTATION_FAILED = "{count} provider secret(s) could not be decrypted with the configured keys: key ids {ids}."


class EncryptionRotationError(Exception):
    def __init__(self, failed_ids: list[int], rotated: int):
        shown = ", ".join(str(i) for i in failed_ids[:50]) + (" …" if len(failed_ids) > 50 else "")
        super().__init__(ROTATION_FAILED.format(count=len(failed_ids), ids=shown))
        self.failed_ids = failed_ids
        self.rotated = rotated


@dataclass
class RotationReport:
    rotated: int = 0
    failed_ids: list[int] = field(default_factory=list)


@sensitive_variables("secret")
def encryption_keys_rotate() -> RotationReport:
    """Re-encrypt every secret under the first configured key; raise EncryptionRotationError at the
    end (after rotating all the others) if some could not be decrypted."""
    report = RotationReport()
    ids = list(ProviderKey.objects.exclude(secret_ciphertext="").order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH_SIZE):
        with transaction.atomic():
            batch = ProviderKey.objects.select_for_update(of=("self",)).filter(pk__in=ids[start : start + BATCH_SIZE])
            for key in batch.order_by("pk"):
                if not key.secret_ciphertext:
                    continue  # scrubbed since the ids were read
                try:
                    secret = decrypt_secret(key.secret_ciphertext)
                except SecretDecryptError:
                    report.failed_ids.append(key.pk)
                    continue
                key.secret_ciphertext = encrypt_secret(secret)
                key.fingerprint = secret_fingerprint(secret)
                key.save(update_fields=["secret_ciphertext", "fingerprint"])
                report.rotated += 1
    if report.failed_ids:
        raise EncryptionRotationError(report.failed_ids, report.rotated)
    return report
