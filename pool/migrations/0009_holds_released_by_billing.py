"""Installs the gateway's functions again: pool_settle hands the batch's hold ids to billing's
billing_balances_move (billing/0008), which releases them with the balance moves; pool writes no table
of billing's itself. The signature of pool_settle is unchanged.

The text is frozen in pool/sql/0009_holds_released_by_billing.pg.sql; backwards installs 0008's again
(with billing's 0007 form of billing_balances_move, which billing/0008's reverse restores)."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


class Migration(migrations.Migration):
    dependencies = [
        ("pool", "0008_settle_owners_collected"),
        ("billing", "0008_holds_release"),
    ]

    operations = [
        migrations.RunSQL(
            (SQL_DIR / "0009_holds_released_by_billing.pg.sql").read_text(),
            reverse_sql=(SQL_DIR / "0008_settle_owners_collected.pg.sql").read_text(),
        )
    ]
