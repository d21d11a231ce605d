import getpass
import sys

from django.core.management.base import BaseCommand, CommandError
from django.views.decorators.debug import sensitive_variables

from keys.selectors import provider_get_by_slug
from keys.services import ProviderKeyError, provider_key_create

NO_SECRET = "No secret on standard input."


class Command(BaseCommand):
    help = (
        "Add a platform-owned provider key (pay-as-you-go traffic and BYOK fail-over). The secret is read from "
        "standard input, never from the command line, so it stays out of shell history and process lists."
    )

    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("provider", help="Provider slug, e.g. groq")
        parser.add_argument("--label", default="", help="A name for the key.")

    @sensitive_variables("secret")
    def handle(self, *args, **options):
        provider = provider_get_by_slug(slug=options["provider"])
        if provider is None:
            raise CommandError(f"Unknown or inactive provider {options['provider']!r}.")
        stdin = options.get("stdin") or sys.stdin
        if stdin.isatty():
            secret = getpass.getpass("Provider secret: ")
        else:
            secret = stdin.readline()
        if not secret.strip():
            raise CommandError(NO_SECRET)
        try:
            key = provider_key_create(owner=None, provider=provider, secret=secret, label=options["label"], actor=None)
        except ProviderKeyError as error:
            raise CommandError(str(error)) from None
        key.refresh_from_db()
        self.stdout.write(f"Platform key {key.pk} ({key.masked}) for {provider.name}: {key.status}.")
