"""Installs the gateway's functions again, with fewer statements per request: pool_settle writes a
batch's ledger transactions, entries and exchange earnings in one statement after its requests'
steps, instead of calling pool_ledger_post once per posting (a function call and a statement each),
so pool_ledger_post goes; and it ends a request's holds and lease in one statement, as
pool_hold_take reserves and writes its hold, and pool_key_take stamps and leases its key, in one.

The text is frozen in pool/sql/0006_settle_ledger_per_batch.pg.sql; backwards installs 0005's again."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


class Migration(migrations.Migration):
    dependencies = [("pool", "0005_hot_path_functions")]

    operations = [
        migrations.RunSQL(
            (SQL_DIR / "0006_settle_ledger_per_batch.pg.sql").read_text(),
            reverse_sql=(SQL_DIR / "0005_hot_path_functions.pg.sql").read_text(),
        )
    ]
