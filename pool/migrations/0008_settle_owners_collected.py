"""Installs the gateway's functions again: pool_settle computes an exchange earning on what was collected
(the charge after the cap at the payer's balance), not on the notional cost, records it beside the cost,
and returns the credit (out_reward); it writes other apps' tables only through their own functions
(exchange/0002, keys/0007, accounts/0002), once per batch; the key counters' pre-lock parameter goes.
Its signature changes (the old one is dropped).

The text is frozen in pool/sql/0008_settle_owners_collected.pg.sql; backwards installs 0007's again."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DROP = """
DROP FUNCTION IF EXISTS pool_settle(json, bigint[], text[], bigint[], bigint[], date[], boolean, text[], text, text,
    interval);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("pool", "0007_settle_through_billing"),
        ("exchange", "0002_earnings_collected"),
        ("keys", "0008_settle_stats_leases"),
        ("accounts", "0002_api_key_touch"),
    ]

    operations = [
        migrations.RunSQL(
            (SQL_DIR / "0008_settle_owners_collected.pg.sql").read_text(),
            reverse_sql=DROP + (SQL_DIR / "0007_settle_through_billing.pg.sql").read_text(),
        )
    ]
