"""The opt-in after the upgrade that gave API keys scopes (accounts migration 0003).

That migration made every existing key gateway-only. An operator whose members relied on keys managing
their account runs this once to give the keys made before the upgrade what they could do then —
read, keys and money; never withdrawals, which need a signed-in session whatever a key holds.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db.migrations.recorder import MigrationRecorder

from accounts.services import api_keys_grant_legacy_scopes

SCOPES_MIGRATION = ("accounts", "0003_api_key_scopes")


class Command(BaseCommand):
    help = "Give API keys made before the scopes upgrade their old powers (read, keys, money). Opt-in."

    def add_arguments(self, parser):
        parser.add_argument("--yes", action="store_true", help="Do it (without it, only count the keys).")

    def handle(self, *args, yes: bool, **options):
        applied = MigrationRecorder.Migration.objects.filter(
            app=SCOPES_MIGRATION[0], name=SCOPES_MIGRATION[1]
        ).values_list("applied", flat=True).first()
        if applied is None:
            raise CommandError("The scopes migration is not applied: run `manage.py migrate` first.")
        count = api_keys_grant_legacy_scopes(made_before=applied, dry_run=not yes)
        verb = "gave" if yes else "would give"
        self.stdout.write(f"{verb} read, keys and money to {count} API key(s) made before {applied:%Y-%m-%d %H:%M} UTC")
        if not yes:
            self.stdout.write("run again with --yes to do it")
