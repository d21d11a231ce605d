from django.core.management.base import BaseCommand, CommandError

from billing.services import ledger_problems


class Command(BaseCommand):
    help = (
        "Verify every ledger invariant from the entries, and the checks apps above billing register (e.g. no"
        " exchange earning above the rate of what was collected); exit non-zero naming each violation."
    )

    def handle(self, *args, **options):
        problems = ledger_problems()
        if problems:
            for problem in problems:
                self.stderr.write(f"ledger violation: {problem}")
            raise CommandError(f"{len(problems)} ledger violation(s) found.")
        self.stdout.write(self.style.SUCCESS("ledger OK: every transaction balances, every cached balance matches and every registered check passes."))
