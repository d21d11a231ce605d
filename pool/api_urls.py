"""Management API routes over gateway usage, included at /api/v1/ by config/urls.py."""

from django.urls import path

from pool import api

urlpatterns = [
    path("usage", api.UsageApi.as_view(), name="usage"),
    path("keys/<int:key_id>/stats", api.KeyStatsApi.as_view(), name="provider-key-stats"),
    path("pool", api.PoolApi.as_view(), name="pool"),
]
