"""OpenAPI descriptions drf-spectacular cannot infer. Imported by AccountsConfig.ready()."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A Headroom gateway API key: `Authorization: Bearer hr-…`.",
        }
