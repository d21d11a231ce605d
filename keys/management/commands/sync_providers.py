from pathlib import Path

import pghistory
from django.core.management.base import BaseCommand, CommandError

from keys.services import CatalogueError, providers_sync
from keys.services.catalogue import providers_file


class Command(BaseCommand):
    help = "Load the provider catalogue (keys/providers.toml or HEADROOM_PROVIDERS_FILE) into the database."

    def add_arguments(self, parser):
        parser.add_argument("--file", type=Path, help="Catalogue file to load instead of the configured one.")

    @pghistory.context(command="sync_providers")  # its changes to providers/prices say where they came from
    def handle(self, *args, **options):
        path = options["file"] or providers_file()
        try:
            report = providers_sync(path=path)
        except CatalogueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"Providers from {path}: {len(report.created)} created, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged, {len(report.kept)} kept as edited in the admin."
        )
