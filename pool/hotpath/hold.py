"""The hold: a reservation of the payer's spendable balance (balance − held) for a request in flight.

billing_hold_take (billing's PL/pgSQL, billing/sql/) checks and reserves in one conditional UPDATE
with the hold row, so requests can never together reserve more than the balance; the settlement has
billing release (delete) the request's holds with the balance moves (billing_balances_move). The
first hop holds inside its own statement (pool.hotpath.begin); hold_place is the fail-over's hold.
"""

from pool.hotpath.db import pg_fetchone
from pool.hotpath.dtos import Hold


def hold_id(request_id: str, route: str) -> str:
    """Holds are per request and route: a request that fails over from BYOK to the platform holds for both."""
    return f"{request_id}:{route}"


def hold_id_sql(request_id: str, route: str) -> str:
    """hold_id() as an SQL expression over two text expressions: the first hop names its holds in SQL,
    where the route is decided."""
    return f"{request_id} || ':' || {route}"


HOLD_SQL = "SELECT billing_hold_take($1, $2, $3, $4, $5, $6)"


async def hold_place(hold: Hold) -> bool:
    """Reserve `hold.amount` of the payer's spendable balance (balance − held); False when it cannot
    cover it. One conditional UPDATE checks and reserves, so concurrent requests can never together
    reserve more than the balance; with `monthly_limit`, nor take the API key's month past it."""
    params = [hold.account_id, hold.amount, hold.hold_id, hold.api_key_id, hold.monthly_limit, hold.month_from]
    return bool((await pg_fetchone(HOLD_SQL, params, durable=False))[0])
