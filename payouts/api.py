"""Management API for payouts: conversions, withdrawals, networks.

Money-moving POSTs honour `Idempotency-Key` and parse JSON numbers exactly
(DecimalJSONParser), so `"amount": 10.10` and `"amount": "10.10"` mean the same.

An organization's frozen balance (earned by provider keys it owns) is moved by
sending its slug as `organization` (a body field on POST, a query parameter on
GET for its history); without it the caller's own balance and history are used.
Refusals answer 400 in the management API's one error shape (core.exceptions),
`{"detail": <why>, "code": <stable code>}`, and 403 when the caller is a member
but not an owner of the organization. A slug the caller is not a member of
answers the same 400 whether or not it exists.
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, Organization
from accounts.permissions import ApiKeyScopes, RecentSignInToMoveMoneyOut
from core.money import usd_str
from billing.selectors import BillingOwner, balances_for_owner
from core.idempotency import IDEMPOTENCY_HEADER, idempotent_response
from payouts.parsers import DecimalJSONParser
from payouts.selectors import (
    conversion_list,
    organization_for_member,
    organization_is_owned_by,
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
from payouts.services import (
    PAYOUT_NOT_ORG_OWNER,
    PayoutError,
    PayoutForbidden,
    conversion_create,
    withdrawal_request,
)

ORGANIZATION_UNKNOWN = "Unknown organization: you are not a member of {slug!r}."

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    location=OpenApiParameter.HEADER,
    required=False,
    description="Any unique string (≤255 characters). A retry with the same key and request (compared as parsed: "
    '"0.10" and 0.1 are the same amount) returns the first response; the same key with another request gets 422. '
    "A key is remembered for 24 hours.",
)

ORGANIZATION_PARAMETER = OpenApiParameter(
    "organization",
    location=OpenApiParameter.QUERY,
    required=False,
    description="Slug of an organization you own: list its history instead of yours.",
)


class HistoryPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


def _balances(owner: BillingOwner) -> dict:
    balances = balances_for_owner(owner=owner)
    return {"main": usd_str(balances.main), "frozen": usd_str(balances.frozen)}


def _owner(request: Request, slug: str | None) -> BillingOwner:
    """The caller, or the organization `slug` names among the caller's; PayoutError for any other slug."""
    if not slug:
        return request.user
    organization = organization_for_member(user=request.user, slug=slug)
    if organization is None:
        raise PayoutError(ORGANIZATION_UNKNOWN.format(slug=slug[:100]), code="unknown_organization")
    return organization


def _history_owner(request: Request) -> BillingOwner:
    """Whose history a GET lists: an organization's only for its owners, as only they move its balance."""
    owner = _owner(request, request.query_params.get("organization"))
    if isinstance(owner, Organization) and not organization_is_owned_by(organization=owner, user=request.user):
        raise PayoutForbidden(PAYOUT_NOT_ORG_OWNER)
    return owner


def paginated_schema(serializer_class, name: str):
    """The OpenAPI shape of a HistoryPagination page of `serializer_class`."""
    return inline_serializer(name, fields={
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": serializer_class(many=True),
    })


def _paginated(request: Request, view: APIView, queryset, serializer_class) -> Response:
    paginator = HistoryPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


class MoneyMovingApi(APIView):
    parser_classes = [DecimalJSONParser, FormParser, MultiPartParser]
    throttle_scope = "money"  # its writes (core.throttling.SensitiveWriteThrottle)


class ConversionListCreateApi(MoneyMovingApi):
    api_key_scopes = {"read": ApiKey.Scope.READ, "write": ApiKey.Scope.MONEY}
    @extend_schema(
        responses=paginated_schema(ConversionSerializer, "ConversionPage"),
        operation_id="payouts_conversions_list",
        parameters=[ORGANIZATION_PARAMETER],
        summary="Your conversions (or an organization's you own), newest first",
    )
    def get(self, request: Request) -> Response:
        owner = _history_owner(request)
        return _paginated(request, self, conversion_list(owner=owner), ConversionSerializer)

    @extend_schema(
        request=ConversionCreateSerializer,
        responses={201: ConversionSerializer},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Convert frozen balance to main balance (minimum $0.10)",
    )
    def post(self, request: Request) -> Response:
        serializer = ConversionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def handler() -> Response:
            owner = _owner(request, data.get("organization"))
            conversion = conversion_create(owner=owner, actor=request.user, amount=data["amount"])
            body = {**ConversionSerializer(conversion).data, "balance": _balances(owner)}
            return Response(body, status=status.HTTP_201_CREATED)

        return idempotent_response(request, payload=data, handler=handler)


class WithdrawalListCreateApi(MoneyMovingApi):
    api_key_scopes = {"read": ApiKey.Scope.READ}  # never "write": withdrawing is a signed-in member's alone
    permission_classes = [IsAuthenticated, ApiKeyScopes, RecentSignInToMoveMoneyOut]
    @extend_schema(
        responses=paginated_schema(WithdrawalSerializer, "WithdrawalPage"),
        operation_id="payouts_withdrawals_list",
        parameters=[ORGANIZATION_PARAMETER],
        summary="Your withdrawals (or an organization's you own) and their states",
    )
    def get(self, request: Request) -> Response:
        owner = _history_owner(request)
        return _paginated(request, self, withdrawal_list(owner=owner), WithdrawalSerializer)

    @extend_schema(
        request=WithdrawalCreateSerializer,
        responses={201: WithdrawalSerializer},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Request a crypto withdrawal (minimum $10.00); the amount is held at once",
    )
    def post(self, request: Request) -> Response:
        serializer = WithdrawalCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def handler() -> Response:
            fields = dict(data)
            owner = _owner(request, fields.pop("organization", None))
            withdrawal = withdrawal_request(owner=owner, actor=request.user, **fields)
            body = {**WithdrawalSerializer(withdrawal).data, "balance": _balances(owner)}
            return Response(body, status=status.HTTP_201_CREATED)

        return idempotent_response(request, payload=data, handler=handler)


class WithdrawalDetailApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(
        responses=WithdrawalDetailSerializer,
        summary="One of your withdrawals (or an organization's you own), with its history",
    )
    def get(self, request: Request, withdrawal_id: int) -> Response:
        withdrawal = withdrawal_get_for_user(user=request.user, withdrawal_id=withdrawal_id)
        return Response(WithdrawalDetailSerializer(withdrawal).data)


class WithdrawalNetworkListApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(responses=WithdrawalNetworkSerializer(many=True), summary="Networks withdrawals are paid on")
    def get(self, request: Request) -> Response:
        return Response(WithdrawalNetworkSerializer(withdrawal_network_list(), many=True).data)
