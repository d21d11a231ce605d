"""Dashboard pages (mounted at /dashboard/exchange/ by config/urls.py)."""

from django.urls import path

from payouts import views

urlpatterns = [
    path("", views.exchange_page, name="exchange_page"),
    path("convert/", views.conversion_create_view, name="exchange_convert"),
    path("withdraw/", views.withdrawal_create_view, name="exchange_withdraw"),
]
