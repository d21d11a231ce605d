"""Billing's write API. Other apps call these, never the ledger models directly."""

from .credits import signup_credit_grant
from .ledger import (
    InsufficientFunds,
    LedgerError,
    account_for_owner,
    ledger_post,
    ledger_transfer,
    platform_account,
)
from .usage import (
    byok_fee_charge,
    byok_request_count,
    hold_place,
    hold_release,
    holds_release_stale,
    pool_reward_credit,
    usage_charge,
)

__all__ = [
    "byok_fee_charge",
    "byok_request_count",
    "hold_place",
    "hold_release",
    "holds_release_stale",
    "pool_reward_credit",
    "usage_charge",
    "InsufficientFunds",
    "LedgerError",
    "account_for_owner",
    "ledger_post",
    "ledger_transfer",
    "platform_account",
    "signup_credit_grant",
]
