"""DRF authentication by gateway API key: `Authorization: Bearer hr-…`."""

from rest_framework import authentication, exceptions

from accounts.selectors import api_key_get_by_raw
from accounts.services import api_key_touch

MAX_AUTHORIZATION_LENGTH = 256
INVALID_API_KEY = "Invalid or revoked API key."


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            # Another scheme (e.g. Basic) is not ours to judge.
            return None
        if len(header) > MAX_AUTHORIZATION_LENGTH:
            raise exceptions.AuthenticationFailed(INVALID_API_KEY)
        api_key = api_key_get_by_raw(credentials.strip())
        if api_key is None:
            raise exceptions.AuthenticationFailed(INVALID_API_KEY)
        api_key_touch(api_key=api_key)
        return api_key.user, api_key

    def authenticate_header(self, request) -> str:
        return self.keyword
