from django.core.management.base import BaseCommand, CommandError

from billing.selectors import ledger_violations


class Command(BaseCommand):
    help = "Verify every ledger invariant from the entries; exit non-zero naming each violation."

    def handle(self, *args, **options):
        problems = ledger_violations()
        if problems:
            for problem in problems:
                self.stderr.write(f"ledger violation: {problem}")
            raise CommandError(f"{len(problems)} ledger violation(s) found.")
        self.stdout.write(self.style.SUCCESS("ledger OK: every transaction balances and every cached balance matches."))
