"""Billing's write API. Other apps call these, never the ledger models directly."""

from .checks import ledger_check_register, ledger_problems
from .credits import signup_credit_grant
from .ledger import (
    InsufficientFunds,
    LedgerError,
    account_for_owner,
    ledger_post,
    ledger_transfer,
    platform_account,
)
from .usage import holds_release_stale

__all__ = [
    "holds_release_stale",
    "InsufficientFunds",
    "LedgerError",
    "account_for_owner",
    "ledger_check_register",
    "ledger_post",
    "ledger_problems",
    "ledger_transfer",
    "platform_account",
    "signup_credit_grant",
]
