from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey
from core.money import MoneyError, parse_usd, usd_str


@extend_schema_field({"type": "string", "format": "decimal", "example": "12.50"})
class UsdAmountField(serializers.Field):
    """USD as a decimal string in and out; integer nanodollars inside."""

    default_error_messages = {"invalid": "{message}"}

    def to_internal_value(self, data):
        if isinstance(data, float | int) and not isinstance(data, bool):
            data = str(data)
        try:
            return parse_usd(data)
        except MoneyError as error:
            self.fail("invalid", message=str(error))

    def to_representation(self, value):
        return usd_str(value)


class ApiKeySerializer(serializers.ModelSerializer):
    monthly_limit = UsdAmountField(required=False, allow_null=True)
    key_pool_mode = serializers.ChoiceField(choices=ApiKey.PoolMode.choices, default=ApiKey.PoolMode.ANY)
    byok_fallback = serializers.BooleanField(default=True)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.choices), required=False, allow_empty=False,
        max_length=len(ApiKey.Scope),
        help_text="What the key may do; default [\"gateway\"]. Withdrawals are never an API key's.",
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "key_pool_mode",
            "byok_fallback",
            "monthly_limit",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at"]


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The API key. Shown only in this response.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]

