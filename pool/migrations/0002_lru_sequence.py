"""The strictly increasing sequence behind least-recently-used key picks (PostgreSQL).

A sequence, not now(): concurrent transactions see the same now(), and a
sequence value is unique and ordered across every gateway process. SQLite
serialises writers and uses max + 1 instead (pool.services._next_lru_seq).
"""

from django.db import migrations


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE SEQUENCE IF NOT EXISTS pool_key_lru_seq")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP SEQUENCE IF EXISTS pool_key_lru_seq")


class Migration(migrations.Migration):
    dependencies = [("pool", "0001_initial")]

    operations = [migrations.RunPython(forwards, backwards)]
