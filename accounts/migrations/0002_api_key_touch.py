"""Installs accounts' own SQL for the gateway's settlement: the last-use stamp of the batch's API keys,
which the gateway's pool_settle (pool/0008) calls once per batch: accounts owns every write to its API
keys. The text is frozen in accounts/sql/0002_api_key_touch.pg.sql."""

from pathlib import Path

from django.db import migrations

SQL = (Path(__file__).resolve().parent.parent / "sql" / "0002_api_key_touch.pg.sql").read_text()
DROP = "DROP FUNCTION IF EXISTS accounts_api_keys_touch(bigint[], interval);"


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunSQL(SQL, reverse_sql=DROP)]
