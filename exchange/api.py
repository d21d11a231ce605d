"""Management API for the exchange: the caller's effective payout rates and their earnings."""

import re

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from core.money import usd_str
from core.masking import masked_tail
from exchange.selectors import (
    ResolvedRate,
    exchange_earning_daily,
    exchange_earning_totals_by_key,
    exchange_routing_enabled,
    payout_rate_table,
)
from exchange.serializers import (
    RATE_STATE_DISABLED,
    RATE_STATE_ENABLED,
    DailyEarningsSerializer,
    EarningsSerializer,
    RatesSerializer,
)
from keys.selectors import provider_list

# ASCII digits only (str.isdigit() also takes "²", which int() refuses), and short enough for a bigint.
KEY_ID = re.compile(r"[0-9]{1,18}")
EARNINGS_BAD_KEY = "key must be the id of one of your provider keys."
KEY_REMOVED = "(removed)"  # a removed key's history: its secret, tail included, was scrubbed


def _rate(rate: ResolvedRate) -> dict:
    state = RATE_STATE_DISABLED if rate.disabled else RATE_STATE_ENABLED
    return {"rate": f"{rate.percent:.2f}", "state": state, "scope": rate.scope}


def rates_for(user) -> dict:
    """The rates body: shared by the API and the dashboard page."""
    providers = provider_list().filter(exchange_supported=True)
    return {
        "exchange_enabled": exchange_routing_enabled(),
        "providers": [
            {
                "provider": row.provider.slug,
                "name": row.provider.name,
                **_rate(row.rate),
                "tasks": [{"task": task, **_rate(rate)} for task, rate in row.tasks],
            }
            for row in payout_rate_table(user=user, providers=providers)
        ],
    }


def earnings_for(user) -> dict:
    """The per-key earnings body: shared by the API and the dashboard page."""
    totals = exchange_earning_totals_by_key(owner=user)
    keys = [
        {
            "key_id": row["provider_key_id"],
            "label": row["provider_key__label"],
            "masked": masked_tail(row["provider_key__secret_last4"], missing=KEY_REMOVED),
            "provider": row["provider_key__provider__slug"],
            "requests": row["requests"],
            "settled_cost": usd_str(row["settled_cost"] or 0),
            "earned": usd_str(row["earned"] or 0),
        }
        for row in totals
    ]
    return {
        "earned": usd_str(sum(row["earned"] or 0 for row in totals)),
        "requests": sum(key["requests"] for key in keys),
        "keys": keys,
    }


class RatesApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(
        responses=RatesSerializer,
        summary="Your effective payout rate per exchange provider and task (0% shows as Disabled)",
    )
    def get(self, request: Request) -> Response:
        return Response(rates_for(request.user))


class EarningsApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(responses=EarningsSerializer, summary="Your exchange earnings per provider key")
    def get(self, request: Request) -> Response:
        return Response(earnings_for(request.user))


class DailyEarningsApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(
        responses=DailyEarningsSerializer(many=True),
        parameters=[OpenApiParameter("key", int, description="Only this provider key.")],
        summary="Your exchange earnings per day, key and rate",
    )
    def get(self, request: Request) -> Response:
        key = request.query_params.get("key")
        if key is not None and not KEY_ID.fullmatch(key):
            raise ValidationError({"key": [EARNINGS_BAD_KEY]})
        rows = exchange_earning_daily(owner=request.user, provider_key_id=int(key) if key else None)
        return Response(
            [
                {
                    "date": row["date"].isoformat(),
                    "key_id": row["provider_key_id"],
                    "rate": f"{row['rate_percent']:.2f}",
                    "requests": row["requests"],
                    "settled_cost": usd_str(row["settled_cost"] or 0),
                    "earned": usd_str(row["earned"] or 0),
                }
                for row in rows
            ]
        )
