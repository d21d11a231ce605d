"""Management API for the caller's balances."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from core.money import usd_str
from billing.selectors import balances_for_owner


class BalanceSerializer(serializers.Serializer):
    main = serializers.CharField(help_text="USD, decimal string")
    frozen = serializers.CharField(help_text="USD, decimal string")


class MeSerializer(serializers.Serializer):
    email = serializers.EmailField()
    balance = BalanceSerializer()


class MeApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(responses=MeSerializer, summary="The signed-in user and their balances")
    def get(self, request: Request) -> Response:
        balances = balances_for_owner(owner=request.user)
        return Response(
            {
                "email": request.user.email,
                "balance": {"main": usd_str(balances.main), "frozen": usd_str(balances.frozen)},
            }
        )
