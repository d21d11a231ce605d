"""Response shapes of the exchange API (amounts as USD decimal strings, rates as percent strings)."""

from rest_framework import serializers

RATE_STATE_ENABLED = "Enabled"
RATE_STATE_DISABLED = "Disabled"
STATE_HELP = f"{RATE_STATE_ENABLED}, or {RATE_STATE_DISABLED} when the rate is 0%."


class TaskRateSerializer(serializers.Serializer):
    task = serializers.CharField()
    rate = serializers.CharField(help_text="Percent of the settled cost, e.g. \"90.00\".")
    state = serializers.CharField(help_text=STATE_HELP)
    scope = serializers.CharField(help_text="Which rule level decided it (global, provider, user+provider, …).")


class ProviderRateSerializer(serializers.Serializer):
    provider = serializers.CharField(help_text="Provider slug.")
    name = serializers.CharField()
    rate = serializers.CharField(help_text="The provider-level rate: 0% means you cannot list a key for it.")
    state = serializers.CharField(help_text=STATE_HELP)
    scope = serializers.CharField()
    tasks = TaskRateSerializer(many=True)


class RatesSerializer(serializers.Serializer):
    exchange_enabled = serializers.BooleanField(
        help_text="False while the global rate is 0%: exchange keys are not routed and earn nothing."
    )
    providers = ProviderRateSerializer(many=True)


class KeyEarningsSerializer(serializers.Serializer):
    key_id = serializers.IntegerField()
    label = serializers.CharField()
    masked = serializers.CharField()
    provider = serializers.CharField()
    requests = serializers.IntegerField(help_text="Successful requests the key served on the exchange.")
    settled_cost = serializers.CharField(help_text="USD: the settled cost of those requests.")
    earned = serializers.CharField(help_text="USD credited to your frozen balance.")


class EarningsSerializer(serializers.Serializer):
    earned = serializers.CharField(help_text="USD, all keys.")
    requests = serializers.IntegerField()
    keys = KeyEarningsSerializer(many=True)


class DailyEarningsSerializer(serializers.Serializer):
    date = serializers.DateField()
    key_id = serializers.IntegerField()
    rate = serializers.CharField(help_text="The payout rate these requests earned at (as it was then).")
    requests = serializers.IntegerField()
    settled_cost = serializers.CharField()
    earned = serializers.CharField()
