"""Holds count against their API key's monthly spend limit (README "Money integrity: served ≤ collected").

A hold names the API key whose monthly limit it counts against (only a limited key's holds: a partial
index reads them), and billing_hold_take, given the limit, refuses a hold that would take the key's
settled charges of the month plus its open holds past it, under the payer's account row so that
concurrent requests cannot together overspend it. The functions are frozen in
billing/sql/0007_holds_bound_limits.pg.sql: the whole set again, billing_hold_take with its new
arguments (the three-argument form is dropped)."""

from pathlib import Path

import django.db.models.deletion
from django.db import migrations, models

SQL = (Path(__file__).resolve().parent.parent / "sql" / "0007_holds_bound_limits.pg.sql").read_text()
PREVIOUS = (Path(__file__).resolve().parent.parent / "sql" / "0006_hot_path_ledger.pg.sql").read_text()
DROP_NEW = "DROP FUNCTION IF EXISTS billing_hold_take(bigint, bigint, text, bigint, bigint, timestamptz);"
DROP_OLD = "DROP FUNCTION IF EXISTS billing_hold_take(bigint, bigint, text);"


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0001_initial"),
        ("billing", "0006_hot_path_ledger"),
    ]

    operations = [
        migrations.AddField(
            model_name="balancehold",
            name="api_key",
            field=models.ForeignKey(
                blank=True, db_constraint=False, db_index=False, null=True,
                on_delete=django.db.models.deletion.DO_NOTHING, related_name="+", to="accounts.apikey",
            ),
        ),
        migrations.AddIndex(
            model_name="balancehold",
            index=models.Index(
                condition=models.Q(("api_key__isnull", False)), fields=["api_key"], name="balance_hold_limited_key"
            ),
        ),
        migrations.RunSQL(DROP_OLD + SQL, reverse_sql=DROP_NEW + PREVIOUS),
    ]
