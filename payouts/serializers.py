from rest_framework import serializers

from accounts.serializers import UsdAmountField
from payouts.models import Conversion, Withdrawal, WithdrawalEvent, WithdrawalNetwork


def _organization_field() -> serializers.SlugField:
    return serializers.SlugField(
        max_length=100,
        required=False,
        help_text="Slug of an organization you own, to move its balance instead of yours.",
    )


def _organization_output() -> serializers.SlugRelatedField:
    return serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True, help_text="The organization whose balance moved; null for yours."
    )


class ConversionCreateSerializer(serializers.Serializer):
    amount = UsdAmountField(help_text="USD to move from frozen to main balance, as a decimal string.")
    organization = _organization_field()


class ConversionSerializer(serializers.ModelSerializer):
    amount = UsdAmountField(read_only=True)
    organization = _organization_output()

    class Meta:
        model = Conversion
        fields = ["id", "amount", "organization", "created_at"]


class WithdrawalCreateSerializer(serializers.Serializer):
    amount = UsdAmountField(help_text="USD to withdraw from frozen balance, as a decimal string.")
    network = serializers.CharField(max_length=32, help_text="A network code from GET /api/v1/payouts/networks.")
    address = serializers.CharField(max_length=128, help_text="Your address on that network.")
    organization = _organization_field()


class WithdrawalEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = WithdrawalEvent
        fields = ["from_state", "to_state", "at", "note"]


class WithdrawalSerializer(serializers.ModelSerializer):
    amount = UsdAmountField(read_only=True)
    network = serializers.CharField(source="network.code", read_only=True)
    organization = _organization_output()

    class Meta:
        model = Withdrawal
        fields = [
            "id",
            "amount",
            "organization",
            "network",
            "address",
            "state",
            "tx_hash",
            "note",
            "created_at",
            "decided_at",
        ]


class WithdrawalDetailSerializer(WithdrawalSerializer):
    events = WithdrawalEventSerializer(many=True, read_only=True)

    class Meta(WithdrawalSerializer.Meta):
        fields = [*WithdrawalSerializer.Meta.fields, "events"]


class WithdrawalNetworkSerializer(serializers.ModelSerializer):
    address_format = serializers.CharField(source="get_address_format_display", read_only=True)

    class Meta:
        model = WithdrawalNetwork
        fields = ["code", "name", "address_format"]
