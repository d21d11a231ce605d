"""Installs the gateway's functions again, composing billing's (billing/0006): the hold is
billing_hold_take (pool_hold_take goes), pool_settle posts the batch's ledger and moves its balances
through billing's functions, once per batch, and asks billing_byok_fee_due whether a BYOK request is
past the free tier; what it repeated of Python's constants it now takes as parameters, so its
signature changes (the old one is dropped).

The text is frozen in pool/sql/0007_settle_through_billing.pg.sql; backwards installs 0006's again."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DROP = """
DROP FUNCTION IF EXISTS pool_settle(json, bigint[], text[], bigint[], bigint[], bigint[], date[], boolean, text[],
    text, text, interval);
"""


class Migration(migrations.Migration):
    dependencies = [("pool", "0006_settle_ledger_per_batch"), ("billing", "0006_hot_path_ledger")]

    operations = [
        migrations.RunSQL(
            (SQL_DIR / "0007_settle_through_billing.pg.sql").read_text(),
            reverse_sql=DROP + (SQL_DIR / "0006_settle_ledger_per_batch.pg.sql").read_text(),
        )
    ]
