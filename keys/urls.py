"""Management API routes, included at /api/v1/ by config/urls.py."""

from django.urls import path

from keys import api

urlpatterns = [
    path("keys", api.ProviderKeyListCreateApi.as_view(), name="provider-keys"),
    path("keys/<int:key_id>", api.ProviderKeyDetailApi.as_view(), name="provider-key-detail"),
    path("keys/<int:key_id>/deactivate", api.ProviderKeyDeactivateApi.as_view(), name="provider-key-deactivate"),
    path("keys/<int:key_id>/revalidate", api.ProviderKeyRevalidateApi.as_view(), name="provider-key-revalidate"),
    path("keys/<int:key_id>/reactivate", api.ProviderKeyReactivateApi.as_view(), name="provider-key-reactivate"),
    path("providers", api.ProviderListApi.as_view(), name="providers"),
    path("pool-consent", api.PoolConsentApi.as_view(), name="pool-consent"),
]
