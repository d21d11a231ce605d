"""What the hot path's statements take and give back: one frozen dataclass per shape, one name each."""

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from pool.selectors import Caller


class Refusal:
    """Why the plan refuses a request before anything is reserved (the row's `refusal`)."""

    UNKNOWN_MODEL = "unknown_model"
    POOL_PROVIDER_NOT_CLEARED = "pool_provider_not_cleared"
    POOL_GATE = "pool_gate"
    BYOK_UNAVAILABLE = "byok_unavailable"  # byok_fallback off, and the member's own key cannot serve
    MONTHLY_LIMIT = "monthly_limit"
    INSUFFICIENT_BALANCE = "insufficient_balance"  # not one completion token affordable
    NO_ACCOUNT = "no_account"  # not a refusal: the payer's account is made on first use, then again


@dataclass(frozen=True)
class Ask:
    """What one request asks for: the plan's inputs."""

    raw_hash: str
    slug: str
    model: str
    pool: bool
    platform_only: bool
    prompt_tokens: int  # an upper bound of the prompt's tokens (pool.gateway)
    max_tokens: int | None  # the client's completion cap (the smaller field); None: none sent; 0: no completion
    month: date  # the request's BYOK month (UTC)
    month_from: datetime  # its first instant, for the monthly spend limit
    choices: int = 1  # `n`: completions asked for, each up to the cap


@dataclass(frozen=True)
class PlanRow:
    caller: Caller  # with the payer's main account (None until its first use)
    provider_id: int | None  # None: no routable model by that name
    provider_slug: str | None
    base_url: str | None
    model: str | None
    input_price: int | None
    output_price: int | None
    route: str  # the first route to try
    include_exchange: bool  # exchange keys may serve the platform route
    worst_case: int  # prompt estimate × input price + choices × cap × output price
    hold_amount: int  # what the first route reserves (0: nothing)
    over_limit: bool  # the platform route would cross the API key's monthly spend limit
    refusal: str | None
    cap: int | None = None  # the completion cap to forward (None: the model is unknown; 0: no completion)
    cap_field: str | None = None  # the field the provider reads it from
    spendable: int | None = None  # the payer's balance less its holds, as the plan read it
    limit_left: int | None = None  # the monthly limit less the month's charges and open holds (None: no limit)


@dataclass(frozen=True)
class Picked:
    key: dict | None  # PICKED_COLUMNS plus the owner's main and frozen account ids; None: no key taken
    candidates: int  # how many keys could serve the route (0: none can; more: all were busy)


@dataclass(frozen=True)
class Hold:
    account_id: int
    amount: int
    hold_id: str
    api_key_id: int | None = None
    monthly_limit: int | None = None  # the API key's limit the hold counts against (None: none)
    month_from: datetime | None = None


@dataclass(frozen=True)
class FirstHop:
    plan: PlanRow | None  # None: the API key is not valid
    held: bool  # the plan's hold_amount is reserved
    picked: Picked  # the first route's key (none when the plan refused or the hold failed)


@dataclass(frozen=True)
class Credit:
    """Money to a key's owner: a pool reward (to their main account) or an exchange earning (frozen)."""

    amount: int | None  # None: an exchange earning, the rate of what pool_settle collects after the cap
    account_id: int
    source_kind: str  # the platform account it comes from
    txn_kind: str
    idempotency_key: str
    memo: str


@dataclass(frozen=True)
class Earning:
    """The exchange earning's own row: the rate as it was, whatever the amount (0% included). The amount
    is not here: it is the rate of what was collected, known only once pool_settle has capped the charge
    at the payer's balance (it computes it there, with core.money's rounding in SQL)."""

    account_id: int
    settled_cost: int
    rate_percent: Decimal  # at most two decimals (exchange.models.PayoutRateRule.percent)
    rule_id: int | None
    scope: str


@dataclass(frozen=True)
class SettleSpec:
    record: dict  # pool_requestrecord columns, but charged and fee (decided here)
    payer_account_id: int | None  # None: nothing to charge or release
    charge: int  # the cost to charge, capped at the payer's balance
    charge_key: str
    charge_memo: str
    byok_owner: tuple[int | None, int | None] | None  # (user_id, organization_id) whose month counts; None: no count
    month: date
    free_requests: int
    fee: int  # the BYOK fee if this request is past the free tier, capped at what the charge left
    fee_key: str
    fee_memo: str
    credit: Credit | None
    earning: Earning | None
    hold_ids: tuple[str, ...]
    key_id: int | None
    stats: bool  # count the request in the key's aggregates (succeeded only)
    touch_api_key: bool  # last_used_at is older than its resolution
    limited: bool = False  # the API key has a monthly spend limit: add the charge to its month's counter


@dataclass(frozen=True)
class Settled:
    inserted: bool  # False: the request was settled before; nothing moved now
    charged: int
    fee: int
    reward: int  # the pool reward or exchange earning credited to the key's owner (0: none)
