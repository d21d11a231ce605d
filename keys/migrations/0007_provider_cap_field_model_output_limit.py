"""The cap a provider reads and a model's output limit (README "Money integrity: served ≤ collected").

`Provider.cap_field`: the completion-cap field the provider reads (max_tokens or
max_completion_tokens); the gateway forwards the cap it held in it and drops the other.
`ProviderModel.max_output_tokens`: the model's output limit, which bounds that cap (empty:
HEADROOM_DEFAULT_MAX_TOKENS). The catalogue's next sync sets each provider's cap field from
keys/providers.toml; until then every provider reads max_tokens, the most common field.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("keys", "0006_key_pick_index_heap_only"),
    ]

    operations = [
        migrations.AddField(
            model_name="provider",
            name="cap_field",
            field=models.CharField(
                choices=[("max_tokens", "max_tokens"), ("max_completion_tokens", "max_completion_tokens")],
                default="max_tokens",
                help_text="The completion-cap field this provider reads: the gateway forwards the held cap in it "
                "and drops the other one.",
                max_length=24,
            ),
        ),
        migrations.AddField(
            model_name="providermodel",
            name="max_output_tokens",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="The model's output limit in tokens; empty: HEADROOM_DEFAULT_MAX_TOKENS. Bounds the cap "
                "the gateway holds for and forwards.",
                null=True,
            ),
        ),
    ]
