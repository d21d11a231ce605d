"""Installs the gateway's PostgreSQL functions (pool.hotpath.functions): the per-request
steps of the first hop and of the settlement, which the gateway runs a batch at a time. Their source
lives with the statements that call them; SQLite needs none of them."""

from django.db import migrations


def forwards(apps, schema_editor):
    from pool.hotpath.functions import install_functions

    install_functions(schema_editor)


def backwards(apps, schema_editor):
    from pool.hotpath.functions import drop_functions

    drop_functions(schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("pool", "0004_request_record_fewer_checks"),
        ("keys", "0005_lease_unchecked_key_plain_index"),
        ("billing", "0005_holds_deleted_on_release"),
        ("exchange", "0001_initial"),
        ("accounts", "0001_initial"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
