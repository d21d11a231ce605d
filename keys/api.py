"""Management API for the caller's provider keys and the provider catalogue.

Refusals answer 400 (409 for a duplicate secret, 403 for an organization the caller does not own)
in the management API's one error shape (core.exceptions): `{"detail": <why>, "code": <stable code>}`. The secret is accepted on POST and never rendered;
the views are marked so that Django's error reports hide it (`sensitive_post_parameters`,
`sensitive_variables`; keys.reporting keeps those markers active even with DEBUG on).
"""

from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, Organization
from core.exceptions import ApiError
from keys.selectors import (
    pool_consent_for_user,
    provider_get_by_slug,
    provider_key_get_for_user,
    provider_key_list_for_user,
    provider_key_transitions,
    provider_list,
)
from keys.serializers import (
    PoolConsentSerializer,
    ProviderKeyCreateSerializer,
    ProviderKeyDetailSerializer,
    ProviderKeySerializer,
    ProviderKeyUpdateSerializer,
    ProviderSerializer,
)
from keys.services import (
    POOL_CONSENT_TEXT,
    POOL_CONSENT_VERSION,
    exchange_refusal,
    provider_key_create,
    provider_key_deactivate,
    provider_key_reactivate,
    provider_key_revalidate,
    provider_key_update,
)

PROVIDER_UNKNOWN = "unknown provider: {slug!r} is not in the catalogue."
ORGANIZATION_UNKNOWN = "unknown organization: you are not a member of {slug!r}."


def _detail(key, *, status_code: int = status.HTTP_200_OK) -> Response:
    context = {"history": provider_key_transitions(key=key)}
    return Response(ProviderKeyDetailSerializer(key, context=context).data, status=status_code)


@method_decorator(sensitive_post_parameters("secret"), name="dispatch")
class ProviderKeyListCreateApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ, "write": ApiKey.Scope.KEYS}
    @extend_schema(responses=ProviderKeySerializer(many=True), summary="List your provider keys")
    def get(self, request: Request) -> Response:
        keys = provider_key_list_for_user(user=request.user)
        return Response(ProviderKeySerializer(keys, many=True).data)

    @extend_schema(
        request=ProviderKeyCreateSerializer,
        responses={201: ProviderKeyDetailSerializer},
        summary="Add a provider key (verified in the background; the secret is never shown again)",
    )
    # Every local here may hold the secret (the serializer's repr shows its input data).
    @method_decorator(sensitive_variables())
    def post(self, request: Request) -> Response:
        serializer = ProviderKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        provider = provider_get_by_slug(slug=data.pop("provider"))
        if provider is None:
            slug = serializer.validated_data["provider"]
            raise ApiError(PROVIDER_UNKNOWN.format(slug=slug), code="unknown_provider")
        owner = request.user
        org_slug = data.pop("organization", None)
        if org_slug:
            owner = Organization.objects.filter(slug=org_slug, memberships__user=request.user).first()
            if owner is None:
                raise ApiError(ORGANIZATION_UNKNOWN.format(slug=org_slug), code="unknown_organization")
        key = provider_key_create(owner=owner, provider=provider, actor=request.user, **data)
        key.refresh_from_db()
        return _detail(key, status_code=status.HTTP_201_CREATED)


class ProviderKeyDetailApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ, "write": ApiKey.Scope.KEYS}
    @extend_schema(responses=ProviderKeyDetailSerializer, summary="One of your provider keys, with its history")
    def get(self, request: Request, key_id: int) -> Response:
        return _detail(provider_key_get_for_user(user=request.user, key_id=key_id))

    @extend_schema(
        request=ProviderKeyUpdateSerializer,
        responses=ProviderKeyDetailSerializer,
        summary="Change a key's label or uses (byok, donate_to_pool with consent, exchange)",
    )
    def patch(self, request: Request, key_id: int) -> Response:
        key = provider_key_get_for_user(user=request.user, key_id=key_id)
        serializer = ProviderKeyUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        key = provider_key_update(key=key, actor=request.user, **serializer.validated_data)
        return _detail(key)

    @extend_schema(
        responses={202: ProviderKeyDetailSerializer},
        summary="Remove a key: it stops taking work, finishes what is in flight, and its secret is erased",
    )
    def delete(self, request: Request, key_id: int) -> Response:
        key = provider_key_get_for_user(user=request.user, key_id=key_id)
        key = provider_key_deactivate(key=key, actor=request.user, remove=True)
        key.refresh_from_db()
        return _detail(key, status_code=status.HTTP_202_ACCEPTED)


def _owner_action(request: Request, key_id: int, service) -> Response:
    """Run one of the owner's key actions (a keys service) on their own key and render the result."""
    key = provider_key_get_for_user(user=request.user, key_id=key_id)
    key = service(key=key, actor=request.user)
    key.refresh_from_db()
    return _detail(key)


class ProviderKeyDeactivateApi(APIView):
    api_key_scopes = {"write": ApiKey.Scope.KEYS}
    @extend_schema(request=None, responses=ProviderKeyDetailSerializer, summary="Deactivate a key (kept, not used)")
    def post(self, request: Request, key_id: int) -> Response:
        return _owner_action(request, key_id, provider_key_deactivate)


class ProviderKeyRevalidateApi(APIView):
    api_key_scopes = {"write": ApiKey.Scope.KEYS}
    @extend_schema(
        request=None, responses=ProviderKeyDetailSerializer, summary="Verify an exhausted or failed key again"
    )
    def post(self, request: Request, key_id: int) -> Response:
        return _owner_action(request, key_id, provider_key_revalidate)


class ProviderKeyReactivateApi(APIView):
    api_key_scopes = {"write": ApiKey.Scope.KEYS}
    @extend_schema(request=None, responses=ProviderKeyDetailSerializer, summary="Resume a key paused by rate limits")
    def post(self, request: Request, key_id: int) -> Response:
        return _owner_action(request, key_id, provider_key_reactivate)


class ProviderListApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(
        responses=ProviderSerializer(many=True),
        summary="Providers, their pool clearance, and whether you may list their keys on the exchange",
    )
    def get(self, request: Request) -> Response:
        providers = list(provider_list())
        refusals = {}
        for provider in providers:
            refusal = exchange_refusal(provider=provider, owner_user=request.user)
            refusals[provider.pk] = str(refusal) if refusal else None
        return Response(ProviderSerializer(providers, many=True, context={"exchange_refusals": refusals}).data)


class PoolConsentApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ}
    @extend_schema(responses=PoolConsentSerializer, summary="The pool terms, and whether you accepted them")
    def get(self, request: Request) -> Response:
        consent = pool_consent_for_user(user=request.user, version=POOL_CONSENT_VERSION)
        return Response(
            {
                "version": POOL_CONSENT_VERSION,
                "text": POOL_CONSENT_TEXT,
                "accepted_at": consent.accepted_at if consent else None,
            }
        )
