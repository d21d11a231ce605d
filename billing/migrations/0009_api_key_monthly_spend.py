"""The API keys' monthly spend counters, and billing_hold_take reading them: the monthly spend limit
no longer sums the month's request records (pool's table) on every limited request. The counters are
filled from the records by pool/0010, which also makes the settlement keep them.

The functions are frozen in billing/sql/0009_api_key_monthly_spend.pg.sql: the whole set again."""

from pathlib import Path

import django.db.models.deletion
from django.db import migrations, models

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DROP_NEW = "DROP FUNCTION IF EXISTS billing_api_key_spend_add(bigint[], date[], bigint[]);"


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_api_key_scopes'),
        ('billing', '0008_holds_release'),
    ]

    operations = [
        migrations.CreateModel(
            name='ApiKeyMonthlySpend',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField(help_text='The first day of the month, UTC.')),
                ('charged', models.BigIntegerField(default=0)),
                ('api_key', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='accounts.apikey')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('api_key', 'month'), name='api_key_spend_key_month'), models.CheckConstraint(condition=models.Q(('charged__gte', 0)), name='api_key_spend_not_negative')],
            },
        ),
        migrations.RunSQL(
            (SQL_DIR / "0009_api_key_monthly_spend.pg.sql").read_text(),
            reverse_sql=DROP_NEW + (SQL_DIR / "0008_holds_release.pg.sql").read_text(),
        ),
    ]
