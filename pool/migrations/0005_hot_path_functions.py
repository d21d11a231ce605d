"""Installs the gateway's PostgreSQL functions: the per-request steps of the first hop and of the
settlement, which the gateway runs a batch at a time.

The text is frozen in pool/sql/0005_hot_path_functions.pg.sql, so replaying history installs what this
migration installed then, whatever the code says today. It was reconstructed exactly from pool/sql.py
at commit 074e1f0 (until then this migration imported the live text)."""

from pathlib import Path

from django.db import migrations

SQL = (Path(__file__).resolve().parent.parent / "sql" / "0005_hot_path_functions.pg.sql").read_text()
DROP = """
DROP FUNCTION IF EXISTS pool_settle(json, bigint[], text[], bigint[], bigint[], bigint[], date[], boolean);
DROP FUNCTION IF EXISTS pool_ledger_post(text, text, text, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS pool_key_take(bigint, bigint[], text);
DROP FUNCTION IF EXISTS pool_hold_take(bigint, bigint, text);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("pool", "0004_request_record_fewer_checks"),
        ("keys", "0005_lease_unchecked_key_plain_index"),
        ("billing", "0005_holds_deleted_on_release"),
        ("exchange", "0001_initial"),
        ("accounts", "0001_initial"),
    ]

    operations = [migrations.RunSQL(SQL, reverse_sql=DROP)]
