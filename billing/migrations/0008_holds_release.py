"""billing_balances_move releases holds too: given the settled batch's hold ids, it deletes them and
moves each account's held amount with its balance, so that the gateway's settlement (pool/0009) writes
no table of billing's itself. Its third argument changes (held deltas → hold ids): the old form is
dropped.

The functions are frozen in billing/sql/0008_holds_release.pg.sql: the whole set again."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DROP_NEW = "DROP FUNCTION IF EXISTS billing_balances_move(bigint[], bigint[], text[]);"
DROP_OLD = "DROP FUNCTION IF EXISTS billing_balances_move(bigint[], bigint[], bigint[]);"


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_holds_bound_limits")]

    operations = [
        migrations.RunSQL(
            DROP_OLD + (SQL_DIR / "0008_holds_release.pg.sql").read_text(),
            reverse_sql=DROP_NEW + (SQL_DIR / "0007_holds_bound_limits.pg.sql").read_text(),
        )
    ]
