"""The OpenAPI schema's error responses: the one error shape (core.exceptions), described once."""

from drf_spectacular import openapi
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="Why, for people.")
    code = serializers.CharField(help_text="Stable, for programs: e.g. not_found, invalid, duplicate_key.")


class ValidationErrorSerializer(ErrorSerializer):
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="For a request that failed validation (code `invalid`): each field's messages.",
    )


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's, plus the error responses every management endpoint can give."""

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        errors = {}
        if self.method in ("POST", "PUT", "PATCH"):
            errors["400"] = ValidationErrorSerializer
        if self.view.authentication_classes:
            errors["401"] = errors["403"] = ErrorSerializer
        if "{" in self.path:
            errors["404"] = ErrorSerializer
        if self.view.throttle_classes:
            errors["429"] = ErrorSerializer  # throttled (core.throttling): Retry-After says when to retry
        for code, serializer in errors.items():
            # An endpoint's own declaration of a code wins.
            responses.setdefault(code, self._get_response_for_code(serializer, code, direction=direction))
        return responses
