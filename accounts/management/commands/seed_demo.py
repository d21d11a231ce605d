"""Demo data for the embedded default (`make run`): a verified demo member.

Refuses to run with DEBUG off, so a production database never gets an account
with a published password.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import user_create

DEMO_EMAIL = "demo@headroom.local"
DEMO_PASSWORD = "headroom-demo"


class Command(BaseCommand):
    help = "Create the demo member (idempotent). Development only."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("seed_demo only runs with DEBUG on: it creates an account with a published password.")
        if not User.objects.filter(email=DEMO_EMAIL).exists():
            user_create(email=DEMO_EMAIL, password=DEMO_PASSWORD, verified=True)
        self.stdout.write(f"demo member: {DEMO_EMAIL} / {DEMO_PASSWORD}")
