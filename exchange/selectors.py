"""Reads for the exchange: the payout-rate resolver, the rates a member sees, earnings history.

The gateway reads the global rule (`GLOBAL_RULE`, judged by `exchange_open_at`)
inside its first statement and calls `payout_rate_resolve` when an exchange key
served a request, so the resolver is one indexed query: it fetches every rule
that could apply (global included) in one SELECT and picks in Python.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import BigIntegerField, Count, DecimalField, ExpressionWrapper, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from accounts.models import Organization, User
from billing.models import Account
from core.money import percent_of
from exchange.models import ExchangeEarning, PayoutRateRule, Task, rule_scope
from keys.services import ProviderKeyError

Scope = PayoutRateRule.Scope
PERCENT_QUANTUM = Decimal("0.01")
ZERO = Decimal("0.00")

EXCHANGE_CLOSED = "exchange closed: the platform is not routing traffic to exchange keys right now."
EXCHANGE_RATE_ZERO = "exchange disabled: the payout rate for {provider} keys is 0% for you."


@dataclass(frozen=True)
class ResolvedRate:
    """The payout rate in force for one (user, provider, task), and the rule it came from.

    `rule_id` is None when no rule applies and the settings default is used
    (`scope` is then "global").
    """

    percent: Decimal
    rule_id: int | None
    scope: str

    @property
    def disabled(self) -> bool:
        return self.percent <= 0


@dataclass(frozen=True)
class RateCandidate:
    scope: str
    rule_id: int | None
    percent: Decimal | None


@dataclass(frozen=True)
class RateExplanation:
    """A resolution with its working: every scope, the rule it has (if any) and which one won."""

    resolved: ResolvedRate
    candidates: tuple[RateCandidate, ...]
    global_switch_off: bool


def default_payout_rate() -> Decimal:
    """The global rate while no global rule exists (setting HEADROOM_DEFAULT_PAYOUT_RATE)."""
    return Decimal(settings.HEADROOM_DEFAULT_PAYOUT_RATE).quantize(PERCENT_QUANTUM)


def _id(obj) -> int | None:
    return getattr(obj, "pk", obj)


def _rule_rows(*, user_id: int | None, provider_ids: Iterable[int] | None, task: str | None) -> list[tuple]:
    """(id, user_id, provider_id, task, percent) of every rule that may apply, in one query.

    provider_ids None: rules of any provider. task None: rules of any task.
    """
    users = Q(user__isnull=True)
    if user_id:
        users |= Q(user_id=user_id)
    providers = Q()
    if provider_ids is not None:
        providers = Q(provider__isnull=True) | Q(provider_id__in=list(provider_ids))
    tasks = Q()
    if task is not None:
        tasks = Q(task="") | Q(task=task) if task else Q(task="")
    rules = PayoutRateRule.objects.filter(users, providers, tasks)
    return list(rules.values_list("id", "user_id", "provider_id", "task", "percent"))


def _explain(rows: Iterable[tuple], *, user_id: int | None, provider_id: int | None, task: str) -> RateExplanation:
    """Pick the rate for one (user, provider, task) from candidate rule rows: the one resolver."""
    by_scope: dict[str, tuple[int, Decimal]] = {}
    for rule_id, rule_user, rule_provider, rule_task, percent in rows:
        if rule_user is not None and rule_user != user_id:
            continue
        if rule_provider is not None and rule_provider != provider_id:
            continue
        if rule_task and rule_task != task:
            continue
        by_scope[rule_scope(user_id=rule_user, provider_id=rule_provider, task=rule_task)] = (rule_id, percent)

    candidates = tuple(
        RateCandidate(scope=scope, rule_id=rule_id, percent=percent)
        for scope in Scope.values
        for rule_id, percent in [by_scope.get(scope, (None, None))]
    )
    global_rule_id, global_percent = by_scope.get(Scope.GLOBAL, (None, default_payout_rate()))
    if global_percent <= 0:
        # Global 0% stops the exchange altogether: no user or provider rule
        # brings it back.
        resolved = ResolvedRate(percent=ZERO, rule_id=global_rule_id, scope=Scope.GLOBAL)
        return RateExplanation(resolved=resolved, candidates=candidates, global_switch_off=True)
    for scope in Scope.values:  # most specific first
        if scope in by_scope:
            rule_id, percent = by_scope[scope]
            resolved = ResolvedRate(percent=percent, rule_id=rule_id, scope=scope)
            break
    else:
        resolved = ResolvedRate(percent=global_percent, rule_id=None, scope=Scope.GLOBAL)
    return RateExplanation(resolved=resolved, candidates=candidates, global_switch_off=False)


def payout_rate_explain(*, user: User | int | None, provider, task: str = "") -> RateExplanation:
    """payout_rate_resolve with its working, for the admin's precedence preview."""
    user_id, provider_id = _id(user), _id(provider)
    rows = _rule_rows(user_id=user_id, provider_ids=[provider_id] if provider_id else [], task=task or "")
    return _explain(rows, user_id=user_id, provider_id=provider_id, task=task or "")


def payout_rate_resolve(*, user: User | int | None, provider, task: str = "") -> ResolvedRate:
    """The payout rate for `user`'s key of `provider` serving a `task` request. One query.

    Precedence: user+provider+task → user+provider → user → provider+task →
    provider → global (the settings default when no global rule exists); a
    global rate of 0% resolves everything to 0%. `user` None (a key owned by an
    organization) skips the user scopes. `task` "" asks at provider level (no
    task scopes): what the dashboard shows as the provider's state.
    """
    return payout_rate_explain(user=user, provider=provider, task=task).resolved


# The global rule: no user, no provider. Also compiled into the gateway's first statement (pool.hotpath).
GLOBAL_RULE = Q(user__isnull=True, provider__isnull=True)


def global_payout_rate() -> tuple[Decimal, PayoutRateRule | None]:
    """The global rate and its rule (None: the settings default applies)."""
    rule = PayoutRateRule.objects.filter(GLOBAL_RULE).first()
    return (rule.percent, rule) if rule is not None else (default_payout_rate(), None)


def exchange_routing_enabled() -> bool:
    """Whether exchange keys may be routed at all: the global rate is above 0%. One indexed query."""
    percent = PayoutRateRule.objects.filter(GLOBAL_RULE).values_list("percent", flat=True).first()
    return exchange_open_at(percent)


def exchange_open_at(global_percent: Decimal | None) -> bool:
    """Whether a global rule's percent (None: no rule, the default applies) lets exchange keys route."""
    return (default_payout_rate() if global_percent is None else global_percent) > 0


def exchange_open_sql(global_percent: str, default_open: str) -> str:
    """exchange_open_at in SQL, for the gateway's plan: `global_percent` the global rule's percent (NULL:
    no rule), `default_open` exchange_open_at(None) as a parameter (the setting is read in Python)."""
    return f"CASE WHEN {global_percent} IS NULL THEN {default_open} ELSE {global_percent} > 0 END"


def exchange_listing_refusal(*, provider, owner_user: User | None) -> ProviderKeyError | None:
    """The exchange's rules for listing a key (registered with keys, which asks them): why a key of
    this provider and owner may not be listed now, or None."""
    if not exchange_routing_enabled():
        return ProviderKeyError(EXCHANGE_CLOSED, code="exchange_closed")
    # Provider level (task ""): the rate the dashboard shows as the provider's state for this owner. A 0%
    # rule for one task only still lets the key in; that task then earns nothing (exchange settlement).
    if payout_rate_resolve(user=owner_user, provider=provider, task="").percent <= 0:
        return ProviderKeyError(EXCHANGE_RATE_ZERO.format(provider=provider.name), code="exchange_disabled")
    return None


@dataclass(frozen=True)
class ProviderRates:
    provider: object
    rate: ResolvedRate
    tasks: tuple[tuple[str, ResolvedRate], ...]


def payout_rate_table(*, user: User | None, providers: Iterable) -> list[ProviderRates]:
    """The caller's effective rate per provider (provider level) and per task, in one query."""
    providers = list(providers)
    user_id = _id(user)
    rows = _rule_rows(user_id=user_id, provider_ids=[p.pk for p in providers], task=None)
    table = []
    for provider in providers:
        level = _explain(rows, user_id=user_id, provider_id=provider.pk, task="").resolved
        tasks = tuple(
            (task, _explain(rows, user_id=user_id, provider_id=provider.pk, task=task).resolved)
            for task in Task.values
        )
        table.append(ProviderRates(provider=provider, rate=level, tasks=tasks))
    return table


def _owner_earnings(owner: User | Organization) -> QuerySet[ExchangeEarning]:
    owner_field = "account__organization" if isinstance(owner, Organization) else "account__user"
    return ExchangeEarning.objects.filter(**{owner_field: owner, "account__kind": Account.Kind.FROZEN})


def exchange_earning_daily(*, owner: User | Organization, provider_key_id: int | None = None) -> list[dict]:
    """Per UTC day, key and rate (as snapshotted): requests, settled cost and amount earned, newest first.

    Aggregates only: a seller sees what their keys earned, never the requests behind it.
    """
    earnings = _owner_earnings(owner)
    if provider_key_id is not None:
        earnings = earnings.filter(provider_key_id=provider_key_id)
    return list(
        earnings.annotate(date=TruncDate("created_at"))
        .values("date", "provider_key_id", "rate_percent")
        .annotate(requests=Count("pk"), settled_cost=Sum("settled_cost"), earned=Sum("amount"))
        .order_by("-date", "provider_key_id", "rate_percent")
    )


def exchange_earning_totals_by_key(*, owner: User | Organization) -> list[dict]:
    """Per key: requests earned on, settled cost served and amount earned (nanodollars)."""
    return list(
        _owner_earnings(owner)
        .values("provider_key_id", "provider_key__label", "provider_key__secret_last4", "provider_key__provider__slug")
        .annotate(requests=Count("pk"), settled_cost=Sum("settled_cost"), earned=Sum("amount"))
        .order_by("provider_key_id")
    )


# --- ledger_check -------------------------------------------------------------------------------------


def earning_violations(*, limit: int = 50) -> list[str]:
    """Exchange earnings paid out of money that was never collected (SPEC "Served ≤ collected"): an
    amount above the rate of what was collected, as core.money.percent_of rounds it; an amount
    where nothing was collected; more collected than the settled cost. Registered with billing's
    `ledger_check` (exchange.apps). Rows recorded before `collected` was kept are pool's to check, against
    their request's charge."""
    suspects = (
        ExchangeEarning.objects.filter(collected__isnull=False)
        .annotate(
            amount_x100=ExpressionWrapper(F("amount") * 100, output_field=BigIntegerField()),
            rate_x_collected=ExpressionWrapper(
                F("collected") * F("rate_percent"), output_field=DecimalField(max_digits=40, decimal_places=2)
            ),
        )
        # amount > collected × rate / 100 exactly: a superset of amount > percent_of(...), confirmed below
        .filter(Q(amount_x100__gt=F("rate_x_collected")) | Q(collected__gt=F("settled_cost")))
        .order_by("pk")
        .values_list("pk", "request_id", "settled_cost", "collected", "rate_percent", "amount")
    )
    problems = []
    for pk, request_id, cost, collected, rate, amount in suspects.iterator():
        if collected > cost:
            problems.append(f"exchange earning {pk} (request {request_id}) collected {collected}, more than its"
                            f" settled cost {cost}")
        elif collected == 0 and amount > 0:
            problems.append(f"exchange earning {pk} (request {request_id}) earned {amount} where nothing was collected")
        elif amount > percent_of(collected, rate):
            problems.append(f"exchange earning {pk} (request {request_id}) earned {amount}, more than {rate}% of the"
                            f" {collected} collected ({percent_of(collected, rate)})")
        if len(problems) >= limit:
            break
    return problems
