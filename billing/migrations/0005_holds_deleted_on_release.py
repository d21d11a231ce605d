"""Holds exist only while open: a release deletes the row (billing.models.BalanceHold says why).

Released holds are deleted first: they moved no money and nothing reads them. The hold's account
reference is no longer checked by the database (each request inserts a hold, and the check locked the
payer's row). Unique request ids and idempotency keys become constraints, which on PostgreSQL leave out
the pattern-matching index that a field-level `unique` adds and no query uses.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0004_account_held'),
    ]

    operations = [
        migrations.RunSQL(
            "DELETE FROM billing_balancehold WHERE released_at IS NOT NULL", reverse_sql=migrations.RunSQL.noop
        ),
        migrations.RemoveIndex(
            model_name='balancehold',
            name='balance_hold_open',
        ),
        migrations.RemoveField(
            model_name='balancehold',
            name='released_at',
        ),
        migrations.AlterField(
            model_name='balancehold',
            name='account',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='holds', to='billing.account'),
        ),
        migrations.AlterField(
            model_name='balancehold',
            name='request_id',
            field=models.CharField(max_length=64),
        ),
        migrations.AlterField(
            model_name='ledgertransaction',
            name='idempotency_key',
            field=models.CharField(max_length=200),
        ),
        migrations.AddConstraint(
            model_name='balancehold',
            constraint=models.UniqueConstraint(fields=('request_id',), name='balance_hold_unique_request'),
        ),
        migrations.AddConstraint(
            model_name='ledgertransaction',
            constraint=models.UniqueConstraint(fields=('idempotency_key',), name='ledger_transaction_unique_key'),
        ),
    ]
