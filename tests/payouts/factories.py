import itertools

from billing.models import Account, LedgerTransaction
from core.money import parse_usd
from billing.services import account_for_owner, ledger_transfer, platform_account
from payouts.models import WithdrawalNetwork

_funding = itertools.count()

# Real, checksum-valid addresses per seeded network.
ADDRESSES = {
    "USDT-TRC20": "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t",
    "USDT-ERC20": "0xdAC17F958D2ee523a2206206994597C13D831ec7",
    "USDC-ERC20": "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
    "USDC-SOL": "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
    "BTC": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
}
TX_HASHES = {
    WithdrawalNetwork.AddressFormat.TRON: "a" * 64,
    WithdrawalNetwork.AddressFormat.EVM: "0x" + "b" * 64,
    WithdrawalNetwork.AddressFormat.SOLANA: "5" * 88,
    WithdrawalNetwork.AddressFormat.BITCOIN: "c" * 64,
}


def fund_frozen(owner, usd: str) -> Account:
    """Credit `usd` to the owner's frozen balance the way exchange earnings arrive."""
    frozen = account_for_owner(owner=owner, kind=Account.Kind.FROZEN)
    ledger_transfer(
        source=platform_account(Account.Kind.EXCHANGE_PAYOUTS),
        destination=frozen,
        amount=parse_usd(usd),
        idempotency_key=f"test-funding:{next(_funding)}:{owner.pk}",
        kind=LedgerTransaction.Kind.EXCHANGE_EARNING,
    )
    frozen.refresh_from_db()
    return frozen


def frozen_balance(owner) -> int:
    return account_for_owner(owner=owner, kind=Account.Kind.FROZEN).balance


def main_balance(owner) -> int:
    return account_for_owner(owner=owner, kind=Account.Kind.MAIN).balance


def platform_balance(kind: str) -> int:
    return platform_account(kind).balance


def processor(**extra):
    """A staff member holding the process_withdrawal permission."""
    from django.contrib.auth.models import Permission

    from tests.accounts.factories import UserFactory

    staff = UserFactory(is_staff=True, **extra)
    staff.user_permissions.add(Permission.objects.get(codename="process_withdrawal", content_type__app_label="payouts"))
    return type(staff).objects.get(pk=staff.pk)  # drop the permission cache
