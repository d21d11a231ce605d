"""The member's Provider Exchange page: frozen balance, rates, earnings per key, convert, withdraw, history."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from billing.money import format_usd
from billing.selectors import balances_for_owner
from exchange.selectors import (
    exchange_earning_totals_by_key,
    exchange_routing_enabled,
    payout_rate_table,
)
from keys.selectors import provider_list
from payouts.forms import ConversionForm, WithdrawalForm
from payouts.selectors import conversion_list, withdrawal_list
from payouts.services import PayoutError, conversion_create, withdrawal_request

HISTORY_ROWS = 20


def _render(request: HttpRequest, *, conversion_form=None, withdrawal_form=None, status: int = 200) -> HttpResponse:
    providers = provider_list().filter(exchange_supported=True)
    context = {
        "balances": balances_for_owner(owner=request.user),
        "exchange_enabled": exchange_routing_enabled(),
        "rates": payout_rate_table(user=request.user, providers=providers),
        "earnings": exchange_earning_totals_by_key(owner=request.user),
        "conversions": conversion_list(user=request.user)[:HISTORY_ROWS],
        "withdrawals": withdrawal_list(user=request.user)[:HISTORY_ROWS],
        "conversion_form": conversion_form or ConversionForm(),
        "withdrawal_form": withdrawal_form or WithdrawalForm(),
    }
    return render(request, "payouts/exchange.html", context, status=status)


@require_GET
@login_required
def exchange_page(request: HttpRequest) -> HttpResponse:
    return _render(request)


@require_POST
@login_required
def conversion_create_view(request: HttpRequest) -> HttpResponse:
    form = ConversionForm(request.POST)
    if form.is_valid():
        try:
            conversion = conversion_create(user=request.user, amount=form.cleaned_data["amount"])
        except PayoutError as error:
            form.add_error("amount", str(error))
        else:
            messages.success(request, f"Converted {format_usd(conversion.amount)} to your main balance.")
            return redirect("exchange_page")
    return _render(request, conversion_form=form, status=422)


@require_POST
@login_required
def withdrawal_create_view(request: HttpRequest) -> HttpResponse:
    form = WithdrawalForm(request.POST)
    if form.is_valid():
        try:
            withdrawal = withdrawal_request(user=request.user, **form.cleaned_data)
        except PayoutError as error:
            form.add_error(None, str(error))
        else:
            messages.success(
                request,
                f"Withdrawal of {format_usd(withdrawal.amount)} requested on {withdrawal.network.code}: "
                "it is held from your frozen balance until support pays it.",
            )
            return redirect("exchange_page")
    return _render(request, withdrawal_form=form, status=422)
