from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from accounts.urls import api_urlpatterns as accounts_api
from core.health import ReadyView, healthz
from core.views import allauth_not_served
from config.metrics import metrics_view
from billing.urls import api_urlpatterns as billing_api


# The admin has no login of its own: it sends staff to allauth's login (`?next=` kept), whose rate limits
# (per client IP and per account, behind a trusted proxy when configured) then guard withdrawals' approvers
# too. Chosen over django-axes: members already sign in through allauth, so one login, one limiter and
# one set of proxy settings instead of a second lockout store with its own IP rules.
admin.site.login = secure_admin_login(admin.site.login)

api_v1 = [
    *accounts_api,
    *billing_api,
    path("", include("keys.urls")),
    path("", include("exchange.urls")),
    path("", include("payouts.urls")),
    path("", include("pool.api_urls")),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", ReadyView.as_view(), name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    # Headroom signs in by e-mail only, but allauth routes its phone endpoints anyway, and one of them
    # answers an anonymous PUT, DELETE or TRACE with a 500 (it reads a user it never set): not served.
    re_path(r"^_allauth/[^/]+/v1/(?:account|auth)/phone(?:/.*)?$", allauth_not_served),
    path("_allauth/", include("allauth.headless.urls")),
    path("api/v1/", include(api_v1)),
    path("dashboard/exchange/", include("payouts.page_urls")),
    path("dashboard/keys/", include("pool.page_urls")),
    path("", include("billing.urls")),
    path("", include("accounts.urls")),
]

handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
