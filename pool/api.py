"""Management API views over gateway usage: the caller's requests, a key's stats, the public pool."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from core.money import usd_str
from keys.models import ProviderKeyStats
from keys.selectors import provider_key_get_for_user
from keys.serializers import ProviderKeyStatsSerializer
from pool.models import RequestRecord
from pool.selectors import (
    key_daily_series,
    pool_provider_aggregates,
    request_list_for_user,
)

MAX_USAGE_ROWS = 500
USAGE_LIMIT_NOT_A_NUMBER = "Must be a whole number."


class RequestRecordSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.slug")
    cost = serializers.SerializerMethodField(help_text="Notional cost, USD")
    charged = serializers.SerializerMethodField(help_text="Charged to your balance, USD")

    class Meta:
        model = RequestRecord
        fields = [
            "request_id", "created_at", "route", "task", "provider", "model", "stream", "outcome",
            "prompt_tokens", "completion_tokens", "usage_estimated", "cost", "charged", "latency_ms", "ttfb_ms",
        ]

    def get_cost(self, record: RequestRecord) -> str:
        return usd_str(record.cost)

    def get_charged(self, record: RequestRecord) -> str:
        return usd_str(record.charged)


class DailyStatsSerializer(serializers.Serializer):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    credits_earned = serializers.CharField(help_text="USD, decimal string")


class KeyStatsSerializer(serializers.Serializer):
    key = serializers.IntegerField()
    totals = ProviderKeyStatsSerializer()
    daily = DailyStatsSerializer(many=True)


class PoolProviderSerializer(serializers.Serializer):
    provider = serializers.CharField()
    name = serializers.CharField()
    active_keys = serializers.IntegerField()
    requests_served = serializers.IntegerField()
    tokens_served = serializers.IntegerField()


class PoolSerializer(serializers.Serializer):
    providers = PoolProviderSerializer(many=True)


class UsageApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(
        parameters=[OpenApiParameter("limit", int, description=f"At most {MAX_USAGE_ROWS} (default 100)")],
        responses=RequestRecordSerializer(many=True),
        summary="Your own gateway requests, newest first",
    )
    def get(self, request: Request) -> Response:
        try:
            limit = max(1, min(int(request.query_params.get("limit", 100)), MAX_USAGE_ROWS))
        except ValueError:
            raise ValidationError({"limit": [USAGE_LIMIT_NOT_A_NUMBER]}) from None
        rows = request_list_for_user(user_id=request.user.pk)[:limit]
        return Response(RequestRecordSerializer(rows, many=True).data)


class KeyStatsApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(responses=KeyStatsSerializer, summary="Aggregate counters of one of your provider keys, with a daily series")
    def get(self, request: Request, key_id: int) -> Response:
        key = provider_key_get_for_user(user=request.user, key_id=key_id)
        totals = ProviderKeyStats.objects.filter(key=key).first() or ProviderKeyStats(key=key)
        series = [
            {
                "day": row["day"].isoformat(),
                "requests": row["requests"],
                "tokens": (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0),
                "credits_earned": usd_str(row["credits"] or 0),
            }
            for row in key_daily_series(key_id=key.pk)
        ]
        return Response({"key": key.pk, "totals": ProviderKeyStatsSerializer(totals).data, "daily": series})


class PoolApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(responses=PoolSerializer, summary="The shared pool: aggregates per cleared provider (public)")
    def get(self, request: Request) -> Response:
        return Response({"providers": pool_provider_aggregates()})
