from django.urls import path

from exchange import api

urlpatterns = [
    path("exchange/rates", api.RatesApi.as_view(), name="api-exchange-rates"),
    path("exchange/earnings", api.EarningsApi.as_view(), name="api-exchange-earnings"),
    path("exchange/earnings/daily", api.DailyEarningsApi.as_view(), name="api-exchange-earnings-daily"),
]
