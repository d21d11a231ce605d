"""The provider-keys dashboard pages (mounted at /dashboard/keys/ by config/urls.py)."""

from django.urls import path

from pool import views

urlpatterns = [
    path("", views.provider_keys_page, name="provider_keys_page"),
    path("add/", views.provider_key_add_view, name="provider_key_add"),
]
urlpatterns += [
    path(f"<int:key_id>/{action}/", views.provider_key_action_view, {"action": action}, name=f"provider_key_{action}")
    for action in views.KEY_ACTIONS
]
