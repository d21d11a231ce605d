from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.money import usd_str
from keys.models import Provider, ProviderKey, ProviderKeyStats


class ProviderKeyCreateSerializer(serializers.Serializer):
    provider = serializers.SlugField(max_length=50, help_text='Provider slug, e.g. "groq".')
    # write_only: the secret is accepted once and never rendered. DRF's messages for it never quote it.
    secret = serializers.CharField(write_only=True, max_length=512, style={"input_type": "password"})
    label = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    byok = serializers.BooleanField(default=True, help_text="Serve your own requests with this key.")
    donate_to_pool = serializers.BooleanField(default=False, help_text="Donate the key to the shared pool.")
    exchange = serializers.BooleanField(default=False, help_text="List the key on the provider exchange.")
    consent = serializers.BooleanField(default=False, help_text="Accept the pool terms (needed once, to donate).")
    organization = serializers.SlugField(
        max_length=100, required=False, help_text="Slug of an organization you own, to enrol the key for it."
    )


class ProviderKeyUpdateSerializer(serializers.Serializer):
    label = serializers.CharField(max_length=100, required=False, allow_blank=True)
    byok = serializers.BooleanField(required=False)
    donate_to_pool = serializers.BooleanField(required=False)
    exchange = serializers.BooleanField(required=False)
    consent = serializers.BooleanField(required=False, default=False)


class ProviderKeyStatsSerializer(serializers.ModelSerializer):
    credits_earned = serializers.SerializerMethodField(help_text="USD, decimal string")

    class Meta:
        model = ProviderKeyStats
        fields = ["requests_served", "prompt_tokens", "completion_tokens", "credits_earned"]

    def get_credits_earned(self, stats: ProviderKeyStats) -> str:
        return usd_str(stats.credits_earned)


class ProviderKeySerializer(serializers.ModelSerializer):
    provider = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    organization = serializers.SlugRelatedField(
        source="owner_org", slug_field="slug", read_only=True, allow_null=True,
        help_text="The organization the key is enrolled for; null for your own.",
    )
    verified_balance = serializers.SerializerMethodField(help_text="USD, decimal string, from the balance API")
    stats = serializers.SerializerMethodField()
    removed = serializers.SerializerMethodField()

    class Meta:
        model = ProviderKey
        fields = [
            "id",
            "provider",
            "organization",
            "label",
            "masked",
            "status",
            "byok",
            "donate_to_pool",
            "exchange",
            "last_error",
            "verified_balance",
            "verified_at",
            "last_used_at",
            "consecutive_429s",
            "failure_count",
            "retry_after_until",
            "removed",
            "created_at",
            "stats",
        ]
        read_only_fields = fields

    def get_verified_balance(self, key: ProviderKey) -> str | None:
        return None if key.verified_balance is None else usd_str(key.verified_balance)

    @extend_schema_field(ProviderKeyStatsSerializer)
    def get_stats(self, key: ProviderKey) -> dict:
        stats = getattr(key, "stats", None) or ProviderKeyStats(key=key)
        return ProviderKeyStatsSerializer(stats).data

    def get_removed(self, key: ProviderKey) -> bool:
        return key.removed_at is not None


class ProviderKeyTransitionSerializer(serializers.Serializer):
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    reason = serializers.CharField()
    at = serializers.DateTimeField()


class ProviderKeyDetailSerializer(ProviderKeySerializer):
    history = serializers.SerializerMethodField()

    class Meta(ProviderKeySerializer.Meta):
        fields = [*ProviderKeySerializer.Meta.fields, "history"]
        read_only_fields = fields

    @extend_schema_field(ProviderKeyTransitionSerializer(many=True))
    def get_history(self, key: ProviderKey) -> list:
        return ProviderKeyTransitionSerializer(self.context.get("history", []), many=True).data


class ExchangeEligibilitySerializer(serializers.Serializer):
    may_list = serializers.BooleanField(help_text="Whether you may list keys of this provider on the exchange.")
    reason = serializers.CharField(allow_null=True, help_text="Why not, when you may not.")


class ProviderSerializer(serializers.ModelSerializer):
    exchange = serializers.SerializerMethodField()

    class Meta:
        model = Provider
        fields = ["slug", "name", "api_style", "balance_api", "pool_clearance", "exchange_supported", "exchange"]
        read_only_fields = fields

    @extend_schema_field(ExchangeEligibilitySerializer)
    def get_exchange(self, provider: Provider) -> dict:
        refusal = self.context["exchange_refusals"].get(provider.pk)
        return {"may_list": refusal is None, "reason": refusal}


class PoolConsentSerializer(serializers.Serializer):
    version = serializers.CharField()
    text = serializers.CharField()
    accepted_at = serializers.DateTimeField(allow_null=True)
