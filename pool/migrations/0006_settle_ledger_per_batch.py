"""Installs the gateway's functions again (pool.hotpath), with fewer statements per request: pool_settle
writes a batch's ledger transactions, entries and exchange earnings in one statement after its
requests' steps, instead of calling pool_ledger_post once per posting (a function call and a statement
each), so pool_ledger_post goes; and it ends a request's holds and lease in one statement, as
pool_hold_take reserves and writes its hold, and pool_key_take stamps and leases its key, in one."""

from django.db import migrations

DROP_LEDGER_POST = "DROP FUNCTION IF EXISTS pool_ledger_post(text, text, text, bigint, bigint, bigint)"


def forwards(apps, schema_editor):
    from pool.hotpath.functions import install_functions

    install_functions(schema_editor)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_LEDGER_POST)


class Migration(migrations.Migration):
    dependencies = [("pool", "0005_hot_path_functions")]

    # Backwards leaves the functions as they are: this pool_settle needs nothing 0005 had.
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
