"""Installs billing's SQL for the gateway's hot path: the hold, the batch's ledger postings, the moves
of cached balances, and the BYOK month's counter and free tier's rule, which the gateway's own
functions (pool/0007) call.

The text is frozen in billing/sql/0006_hot_path_ledger.pg.sql: replaying history installs what this
migration installed, whatever the code says later."""

from pathlib import Path

from django.db import migrations

SQL = (Path(__file__).resolve().parent.parent / "sql" / "0006_hot_path_ledger.pg.sql").read_text()
DROP = """
DROP FUNCTION IF EXISTS billing_byok_fee_due(bigint, bigint);
DROP FUNCTION IF EXISTS billing_byok_count(bigint, bigint, date);
DROP FUNCTION IF EXISTS billing_balances_move(bigint[], bigint[], bigint[]);
DROP FUNCTION IF EXISTS billing_ledger_post_batch(text[], text[], text[], bigint[], bigint[], bigint[]);
DROP FUNCTION IF EXISTS billing_hold_take(bigint, bigint, text);
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_holds_deleted_on_release")]

    operations = [migrations.RunSQL(SQL, reverse_sql=DROP)]
