from django.urls import path

from billing import api, views

urlpatterns = [
    path("dashboard/organizations/", views.organizations, name="organizations"),
]

api_urlpatterns = [
    path("me", api.MeApi.as_view(), name="api-me"),
]
