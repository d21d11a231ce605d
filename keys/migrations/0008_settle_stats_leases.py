"""Installs keys' own SQL for the gateway's settlement: the batch's additions to the keys' aggregate
counters and the end of its requests' leases, which the gateway's pool_settle (pool/0008) calls once
per batch: keys owns every write to its tables. The text is frozen in
keys/sql/0008_settle_stats_leases.pg.sql."""

from pathlib import Path

from django.db import migrations

SQL = (Path(__file__).resolve().parent.parent / "sql" / "0008_settle_stats_leases.pg.sql").read_text()
DROP = """
DROP FUNCTION IF EXISTS keys_leases_end(text[]);
DROP FUNCTION IF EXISTS keys_stats_add(bigint[], bigint[], bigint[], bigint[]);
"""


class Migration(migrations.Migration):
    dependencies = [("keys", "0007_provider_cap_field_model_output_limit")]

    operations = [migrations.RunSQL(SQL, reverse_sql=DROP)]
