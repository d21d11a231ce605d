"""An earning records what was collected from the payer (the settled cost capped at their balance) beside
the settled cost: the amount is the rate of what was collected (SPEC "Served ≤ collected"). Rows recorded
before keep it empty.

Installs the exchange's own SQL for the settlement, exchange_earnings_insert, which the gateway's
pool_settle (pool/0008) calls once per batch: the exchange owns every write to its earnings. The text is
frozen in exchange/sql/0002_earnings_collected.pg.sql."""

from pathlib import Path

from django.db import migrations, models

SQL = (Path(__file__).resolve().parent.parent / "sql" / "0002_earnings_collected.pg.sql").read_text()
DROP = """
DROP FUNCTION IF EXISTS exchange_earnings_insert(bigint[], bigint[], text[], bigint[], bigint[], numeric[], bigint[],
    text[], bigint[], text[]);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0006_hot_path_ledger'),
        ('exchange', '0001_initial'),
        ('keys', '0006_key_pick_index_heap_only'),
    ]

    operations = [
        migrations.AddField(
            model_name='exchangeearning',
            name='collected',
            field=models.BigIntegerField(blank=True, help_text='Nanodollars actually charged to the payer (the settled cost capped at their balance); the amount is the rate of this. Empty on rows recorded before it was kept.', null=True),
        ),
        migrations.AddConstraint(
            model_name='exchangeearning',
            constraint=models.CheckConstraint(condition=models.Q(('collected__isnull', True), models.Q(('collected__gte', 0), ('collected__lte', models.F('settled_cost'))), _connector='OR'), name='exchange_earning_collected_within_cost'),
        ),
        migrations.RunSQL(SQL, reverse_sql=DROP),
    ]
