"""The member's Provider Exchange page: frozen balance, rates, earnings per key, convert, withdraw, history.

`?organization=<slug>` (on the page and on both form posts) shows and moves an
organization's balance instead, for its owners; for anyone else the slug is a
404, alike whether the organization exists or not.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from accounts.models import Organization
from accounts.permissions import signed_in_recently
from core.money import format_usd
from billing.selectors import BillingOwner, balances_for_owner
from exchange.selectors import (
    exchange_earning_totals_by_key,
    exchange_routing_enabled,
    payout_rate_table,
)
from keys.selectors import provider_list
from payouts.forms import ConversionForm, WithdrawalForm
from payouts.selectors import (
    conversion_list,
    organization_for_member,
    organization_is_owned_by,
    organizations_owned_by,
    withdrawal_list,
)
from payouts.services import PayoutError, conversion_create, withdrawal_request

HISTORY_ROWS = 20


def _owner(request: HttpRequest) -> BillingOwner:
    """The member, or the organization `?organization=` names if they own it (404 otherwise)."""
    slug = request.GET.get("organization")
    if not slug:
        return request.user
    organization = organization_for_member(user=request.user, slug=slug)
    if organization is None or not organization_is_owned_by(organization=organization, user=request.user):
        raise Http404("No such organization.")
    return organization


def _page_url(owner: BillingOwner, name: str = "exchange_page") -> str:
    """A page URL keeping the organization the member is acting for."""
    url = reverse(name)
    if isinstance(owner, Organization):
        return f"{url}?{urlencode({'organization': owner.slug})}"
    return url


def _whose(owner: BillingOwner) -> str:
    return f"{owner.name}'s" if isinstance(owner, Organization) else "your"


def _render(
    request: HttpRequest, owner: BillingOwner, *, conversion_form=None, withdrawal_form=None, status: int = 200
) -> HttpResponse:
    providers = provider_list().filter(exchange_supported=True)
    context = {
        "organization": owner if isinstance(owner, Organization) else None,
        "owned_organizations": organizations_owned_by(user=request.user),
        "convert_url": _page_url(owner, "exchange_convert"),
        "withdraw_url": _page_url(owner, "exchange_withdraw"),
        "balances": balances_for_owner(owner=owner),
        "exchange_enabled": exchange_routing_enabled(),
        # An organization's keys earn at the rates without member overrides (pool.services resolves them with
        # no user), so its page shows those.
        "rates": payout_rate_table(user=None if isinstance(owner, Organization) else owner, providers=providers),
        "earnings": exchange_earning_totals_by_key(owner=owner),
        "conversions": conversion_list(owner=owner)[:HISTORY_ROWS],
        "withdrawals": withdrawal_list(owner=owner)[:HISTORY_ROWS],
        "conversion_form": conversion_form or ConversionForm(),
        "withdrawal_form": withdrawal_form or WithdrawalForm(),
    }
    return render(request, "payouts/exchange.html", context, status=status)


@require_GET
@login_required
def exchange_page(request: HttpRequest) -> HttpResponse:
    return _render(request, _owner(request))


@require_POST
@login_required
def conversion_create_view(request: HttpRequest) -> HttpResponse:
    owner = _owner(request)
    form = ConversionForm(request.POST)
    if form.is_valid():
        try:
            conversion = conversion_create(owner=owner, actor=request.user, amount=form.cleaned_data["amount"])
        except PayoutError as error:
            form.add_error("amount", str(error))
        else:
            messages.success(request, f"Converted {format_usd(conversion.amount)} to {_whose(owner)} main balance.")
            return redirect(_page_url(owner))
    return _render(request, owner, conversion_form=form, status=422)


@require_POST
@login_required
def withdrawal_create_view(request: HttpRequest) -> HttpResponse:
    owner = _owner(request)
    if not signed_in_recently(request):
        # Moving money out needs a recent sign-in, on the page as in the API: confirm, then come back.
        messages.info(request, "Confirm your password to withdraw: a withdrawal needs a recent sign-in.")
        return redirect(f"{reverse('account_reauthenticate')}?{urlencode({'next': _page_url(owner)})}")
    form = WithdrawalForm(request.POST)
    if form.is_valid():
        try:
            withdrawal = withdrawal_request(owner=owner, actor=request.user, **form.cleaned_data)
        except PayoutError as error:
            form.add_error(None, str(error))
        else:
            messages.success(
                request,
                f"Withdrawal of {format_usd(withdrawal.amount)} requested on {withdrawal.network.code}: "
                f"it is held from {_whose(owner)} frozen balance until support pays it.",
            )
            return redirect(_page_url(owner))
    return _render(request, owner, withdrawal_form=form, status=422)
