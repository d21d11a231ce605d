import pghistory
from django.core.management.base import BaseCommand, CommandError

from keys.models import Provider
from keys.services import provider_prices_refresh


class Command(BaseCommand):
    help = (
        "Load model prices per 1M tokens from the genai-prices package data (works offline). "
        "Admin overrides are kept."
    )

    def add_arguments(self, parser):
        parser.add_argument("--provider", action="append", help="Only this provider slug (repeatable).")

    @pghistory.context(command="refresh_prices")  # its changes to providers/prices say where they came from
    def handle(self, *args, **options):
        providers = Provider.objects.order_by("slug")
        if options["provider"]:
            providers = providers.filter(slug__in=options["provider"])
            missing = set(options["provider"]) - set(providers.values_list("slug", flat=True))
            if missing:
                raise CommandError(f"Unknown provider: {', '.join(sorted(missing))}.")
        report = provider_prices_refresh(providers=providers)
        self.stdout.write(
            f"Models: {report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
            f"{report.overrides_kept} admin overrides kept, {report.skipped} not priced per token."
        )
        if report.providers_without_data:
            self.stdout.write(
                f"No genai-prices data for: {', '.join(report.providers_without_data)} "
                "(price their models in the admin)."
            )
