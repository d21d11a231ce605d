"""Copy payouts' Idempotency-Key records into core's table (payouts 0004 then drops its own).

A new table and a copy rather than SeparateDatabaseAndState over the old one: the records live a day,
so the copy is small, and the table, its unique constraint and its indexes get core's names instead
of keeping payouts' forever. Copied records still stop a retry from moving money twice; as their
hash was taken over the raw body (core hashes the validated request), a retry of a request sent
before this migration answers 422 rather than replaying, until the record expires.
"""

from django.db import migrations

FIELDS = ("user_id", "key", "request_hash", "response_status", "response_body", "created_at")


def copy_records(apps, schema_editor):
    # One INSERT … SELECT: created_at is copied as it was (a model save would reset it, auto_now_add),
    # so copied records expire when they would have.
    old = apps.get_model("payouts", "IdempotencyRecord")._meta.db_table
    new = apps.get_model("core", "IdempotencyRecord")._meta.db_table
    quote = schema_editor.quote_name
    columns = ", ".join(quote(name) for name in FIELDS)
    schema_editor.execute(f"INSERT INTO {quote(new)} ({columns}) SELECT {columns} FROM {quote(old)}")


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
        ("payouts", "0003_billing_owner_organization"),
    ]

    operations = [migrations.RunPython(copy_records, migrations.RunPython.noop, elidable=True)]
