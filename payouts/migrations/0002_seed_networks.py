"""The networks payouts start with. Operators add, disable and reorder them in the admin."""

from django.db import migrations

NETWORKS = [
    ("USDT-TRC20", "Tether USD on TRON", "tron"),
    ("USDT-ERC20", "Tether USD on Ethereum", "evm"),
    ("USDC-ERC20", "USD Coin on Ethereum", "evm"),
    ("USDC-SOL", "USD Coin on Solana", "solana"),
    ("BTC", "Bitcoin", "bitcoin"),
]


def seed(apps, schema_editor):
    WithdrawalNetwork = apps.get_model("payouts", "WithdrawalNetwork")
    for position, (code, name, address_format) in enumerate(NETWORKS):
        WithdrawalNetwork.objects.get_or_create(
            code=code, defaults={"name": name, "address_format": address_format, "position": position}
        )


def unseed(apps, schema_editor):
    WithdrawalNetwork = apps.get_model("payouts", "WithdrawalNetwork")
    WithdrawalNetwork.objects.filter(code__in=[code for code, _, _ in NETWORKS], withdrawals__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("payouts", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
