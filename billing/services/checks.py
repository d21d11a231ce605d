"""The checks `manage.py ledger_check` runs: billing's own ledger invariants, and those of apps above
billing about money they recorded beside the ledger (an exchange earning is the rate of what was
collected...).

Billing sits at the bottom of the import contract, so it cannot ask exchange or pool itself: those apps
register their checks here from their AppConfig.ready, as exchange registers its listing rules with keys
(keys.services.exchange_check_register), and billing runs whatever is registered.
"""

from collections.abc import Callable

from billing.selectors import ledger_violations

LedgerCheck = Callable[..., list[str]]  # check(*, limit) -> the violations found, each one sentence
_ledger_checks: list[LedgerCheck] = []


def ledger_check_register(check: LedgerCheck) -> None:
    """Add `check(*, limit) -> list[str]` to every `ledger_check` run (once, however often called)."""
    if check not in _ledger_checks:
        _ledger_checks.append(check)


def ledger_problems(*, limit: int = 50) -> list[str]:
    """Billing's ledger invariants (billing.selectors.ledger_violations), then every registered check's.
    Empty means the ledger and the money recorded beside it are sound."""
    problems = ledger_violations(limit=limit)
    for check in _ledger_checks:
        problems.extend(check(limit=limit))
    return problems
