"""Leases: the key reference not checked by the database, and a plain index on the request id.

Every pick inserts a lease: the check cost it a share lock on the key's row, which the pick has just
updated; `db_index` on a CharField adds a pattern-matching index on PostgreSQL that no query uses.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('keys', '0004_provider_key_leases'),
    ]

    operations = [
        migrations.AlterField(
            model_name='providerkeylease',
            name='key',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, related_name='leases', to='keys.providerkey'),
        ),
        migrations.AlterField(
            model_name='providerkeylease',
            name='request_id',
            field=models.CharField(max_length=64),
        ),
        migrations.AddIndex(
            model_name='providerkeylease',
            index=models.Index(fields=['request_id'], name='provider_key_lease_request'),
        ),
    ]
