from django.urls import path

from payouts import api

urlpatterns = [
    path("payouts/conversions", api.ConversionListCreateApi.as_view(), name="api-payout-conversions"),
    path("payouts/withdrawals", api.WithdrawalListCreateApi.as_view(), name="api-payout-withdrawals"),
    path(
        "payouts/withdrawals/<int:withdrawal_id>",
        api.WithdrawalDetailApi.as_view(),
        name="api-payout-withdrawal-detail",
    ),
    path("payouts/networks", api.WithdrawalNetworkListApi.as_view(), name="api-payout-networks"),
]
