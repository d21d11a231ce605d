"""Management API for payouts: conversions, withdrawals, networks.

Money-moving POSTs honour `Idempotency-Key` and parse JSON numbers exactly
(DecimalJSONParser), so `"amount": 10.10` and `"amount": "10.10"` mean the same.
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.money import usd_str
from billing.selectors import balances_for_owner
from payouts.idempotency import IDEMPOTENCY_HEADER, idempotent_response
from payouts.parsers import DecimalJSONParser
from payouts.selectors import (
    conversion_list,
    withdrawal_get_for_user,
    withdrawal_list,
    withdrawal_network_list,
)
from payouts.serializers import (
    ConversionCreateSerializer,
    ConversionSerializer,
    WithdrawalCreateSerializer,
    WithdrawalDetailSerializer,
    WithdrawalNetworkSerializer,
    WithdrawalSerializer,
)
from payouts.services import PayoutError, conversion_create, withdrawal_request

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    location=OpenApiParameter.HEADER,
    required=False,
    description="Any unique string (≤255 characters). A retry with the same key and body returns the first "
    "response; the same key with another body gets 422.",
)


class HistoryPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


def _balances(request: Request) -> dict:
    balances = balances_for_owner(owner=request.user)
    return {"main": usd_str(balances.main), "frozen": usd_str(balances.frozen)}


def _paginated(request: Request, view: APIView, queryset, serializer_class) -> Response:
    paginator = HistoryPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


class MoneyMovingApi(APIView):
    parser_classes = [DecimalJSONParser, FormParser, MultiPartParser]


class ConversionListCreateApi(MoneyMovingApi):
    @extend_schema(responses=ConversionSerializer(many=True), summary="Your conversions, newest first")
    def get(self, request: Request) -> Response:
        return _paginated(request, self, conversion_list(user=request.user), ConversionSerializer)

    @extend_schema(
        request=ConversionCreateSerializer,
        responses={201: ConversionSerializer},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Convert frozen balance to main balance (minimum $0.10)",
    )
    def post(self, request: Request) -> Response:
        def handler() -> Response:
            serializer = ConversionCreateSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            try:
                conversion = conversion_create(user=request.user, amount=serializer.validated_data["amount"])
            except PayoutError as error:
                return Response({"detail": str(error)}, status=status.HTTP_400_BAD_REQUEST)
            body = {**ConversionSerializer(conversion).data, "balance": _balances(request)}
            return Response(body, status=status.HTTP_201_CREATED)

        return idempotent_response(request, handler)


class WithdrawalListCreateApi(MoneyMovingApi):
    @extend_schema(responses=WithdrawalSerializer(many=True), summary="Your withdrawals and their states")
    def get(self, request: Request) -> Response:
        return _paginated(request, self, withdrawal_list(user=request.user), WithdrawalSerializer)

    @extend_schema(
        request=WithdrawalCreateSerializer,
        responses={201: WithdrawalSerializer},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Request a crypto withdrawal (minimum $10.00); the amount is held at once",
    )
    def post(self, request: Request) -> Response:
        def handler() -> Response:
            serializer = WithdrawalCreateSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            try:
                withdrawal = withdrawal_request(user=request.user, **serializer.validated_data)
            except PayoutError as error:
                return Response({"detail": str(error)}, status=status.HTTP_400_BAD_REQUEST)
            body = {**WithdrawalSerializer(withdrawal).data, "balance": _balances(request)}
            return Response(body, status=status.HTTP_201_CREATED)

        return idempotent_response(request, handler)


class WithdrawalDetailApi(APIView):
    @extend_schema(responses=WithdrawalDetailSerializer, summary="One of your withdrawals, with its history")
    def get(self, request: Request, withdrawal_id: int) -> Response:
        withdrawal = withdrawal_get_for_user(user=request.user, withdrawal_id=withdrawal_id)
        return Response(WithdrawalDetailSerializer(withdrawal).data)


class WithdrawalNetworkListApi(APIView):
    @extend_schema(responses=WithdrawalNetworkSerializer(many=True), summary="Networks withdrawals are paid on")
    def get(self, request: Request) -> Response:
        return Response(WithdrawalNetworkSerializer(withdrawal_network_list(), many=True).data)
