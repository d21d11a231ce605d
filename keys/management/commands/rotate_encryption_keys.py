from django.core.management.base import BaseCommand, CommandError

from keys.services import EncryptionRotationError, encryption_keys_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored provider secret under the first key of HEADROOM_FIELD_ENCRYPTION_KEYS "
        "(and recompute fingerprints). Afterwards the older keys can be removed from the list."
    )

    def handle(self, *args, **options):
        try:
            report = encryption_keys_rotate()
        except EncryptionRotationError as error:
            raise CommandError(f"{error.rotated} secret(s) re-encrypted. {error}") from None
        self.stdout.write(f"{report.rotated} secret(s) re-encrypted under the newest key.")
