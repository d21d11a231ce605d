"""Request records: references not checked by the database, and the unique request id as a constraint.

Every settlement inserts a record: each checked reference cost it a lookup and a share lock on a row
all of its caller's requests share, and a field-level unique adds a pattern-matching index on
PostgreSQL that no query uses (pool.models.RequestRecord).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
        ('keys', '0004_provider_key_leases'),
        ('pool', '0003_request_record_fewer_indexes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='requestrecord',
            name='api_key',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='accounts.apikey'),
        ),
        migrations.AlterField(
            model_name='requestrecord',
            name='organization',
            field=models.ForeignKey(blank=True, db_constraint=False, help_text="The billing owner when the request was made with an organization's key.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='accounts.organization'),
        ),
        migrations.AlterField(
            model_name='requestrecord',
            name='provider',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='keys.provider'),
        ),
        migrations.AlterField(
            model_name='requestrecord',
            name='provider_key',
            field=models.ForeignKey(db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='keys.providerkey'),
        ),
        migrations.AlterField(
            model_name='requestrecord',
            name='request_id',
            field=models.CharField(max_length=64),
        ),
        migrations.AlterField(
            model_name='requestrecord',
            name='requester',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='gateway_requests', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddConstraint(
            model_name='requestrecord',
            constraint=models.UniqueConstraint(fields=('request_id',), name='request_record_unique_request'),
        ),
    ]
