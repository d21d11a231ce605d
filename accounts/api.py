"""Management API for the caller's gateway API keys (`/me`, which shows balances, is billing's)."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from accounts.permissions import api_key_of
from accounts.selectors import api_key_get_for_user, api_key_list
from core.schema import ErrorSerializer
from accounts.serializers import ApiKeyCreatedSerializer, ApiKeySerializer
from accounts.services import api_key_create, api_key_revoke


class ApiKeyListCreateApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ, "write": ApiKey.Scope.KEYS}
    throttle_scope = "api_keys"  # creating one (core.throttling.SensitiveWriteThrottle)
    @extend_schema(responses=ApiKeySerializer(many=True), summary="List your gateway API keys")
    def get(self, request: Request) -> Response:
        return Response(ApiKeySerializer(api_key_list(user=request.user), many=True).data)

    @extend_schema(
        request=ApiKeySerializer,
        responses={201: ApiKeyCreatedSerializer, 409: ErrorSerializer},
        summary="Create a gateway API key (the key is in this response only)",
    )
    def post(self, request: Request) -> Response:
        serializer = ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, raw = api_key_create(user=request.user, granted_by=api_key_of(request), **serializer.validated_data)
        api_key.key = raw
        return Response(ApiKeyCreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    api_key_scopes = {"read": ApiKey.Scope.READ, "write": ApiKey.Scope.KEYS}
    @extend_schema(responses=ApiKeySerializer, summary="One of your gateway API keys")
    def get(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeySerializer(api_key_get_for_user(user=request.user, key_id=key_id)).data)

    @extend_schema(responses={204: None}, summary="Revoke a gateway API key")
    def delete(self, request: Request, key_id: int) -> Response:
        api_key_revoke(api_key=api_key_get_for_user(user=request.user, key_id=key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
