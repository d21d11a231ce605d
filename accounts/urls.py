from django.urls import path

from accounts import api, views

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/api-keys/", views.api_key_create_view, name="api_key_create"),
    path("dashboard/api-keys/<int:key_id>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
]

api_urlpatterns = [
    path("api-keys", api.ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>", api.ApiKeyDetailApi.as_view(), name="api-key-detail"),
]
