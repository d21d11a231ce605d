from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey, User
from accounts.services import AccountsError, api_key_create


class Command(BaseCommand):
    help = "Create a gateway API key for an existing user and print it (it is not stored and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--name", default="operator")
        parser.add_argument(
            "--scope", action="append", dest="scopes", choices=ApiKey.Scope.values,
            help="Repeat for each scope (default: gateway only).",
        )

    def handle(self, *args, email: str, name: str, scopes: list[str] | None = None, **options):
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None:
            raise CommandError(f"No user with e-mail {email}.")
        try:
            _, raw = api_key_create(user=user, name=name, scopes=scopes)
        except AccountsError as refused:  # e.g. the member holds HEADROOM_MAX_API_KEYS keys already
            raise CommandError(str(refused)) from None
        self.stdout.write(raw)
