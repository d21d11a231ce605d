"""pool_settle keeps the monthly spend counters (billing/0009) of API keys with a limit, and this fills
them from the request records already settled, so that the limit reads one row rather than the
month's requests.

The counters count what is settled when this runs: a request that a gateway still running the previous
code settles while the migration runs may be missing from its key's counter for this month (its charge
is in the ledger and its record as always); run the migration before the new code takes traffic, as
the README's upgrade notes say.

The text is frozen in pool/sql/0010_api_key_spend_counter.pg.sql; backwards installs 0009's again."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Billing's function adds the sums, as the settlement will: pool reads its own table, billing writes its own.
BACKFILL = """
SELECT billing_api_key_spend_add(array_agg(m.api_key_id), array_agg(m.month), array_agg(m.charged))
FROM (
    SELECT r.api_key_id, date_trunc('month', r.created_at AT TIME ZONE 'UTC')::date AS month, SUM(r.charged)::bigint AS charged
    FROM pool_requestrecord r JOIN accounts_apikey k ON k.id = r.api_key_id AND k.monthly_limit IS NOT NULL
    WHERE r.charged > 0
    GROUP BY 1, 2
) m
HAVING count(*) > 0;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("pool", "0009_holds_released_by_billing"),
        ("billing", "0009_api_key_monthly_spend"),
    ]

    operations = [
        migrations.RunSQL(
            (SQL_DIR / "0010_api_key_spend_counter.pg.sql").read_text() + BACKFILL,
            reverse_sql=(SQL_DIR / "0009_holds_released_by_billing.pg.sql").read_text(),
        )
    ]
