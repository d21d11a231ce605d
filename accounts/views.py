"""Dashboard pages for the signed-in member. Thin: parse, call a service, render.

The balance cards on the dashboard come from billing's context processor (accounts sits below
billing); the organizations page, which shows balances, is billing's.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.middleware import HtmxDetails

from accounts.forms import ApiKeyForm
from accounts.selectors import api_key_get_for_user, api_key_list
from accounts.services import AccountsError, api_key_create, api_key_revoke


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@require_GET
def home(request: HtmxHttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "home.html")


def _render_keys(request: HtmxHttpRequest, *, form: ApiKeyForm, new_key: str | None = None, status: int = 200):
    template = "accounts/dashboard.html#keys" if request.htmx else "accounts/dashboard.html"
    context = {
        "form": form,
        "new_key": new_key,
        "api_keys": api_key_list(user=request.user),
    }
    return render(request, template, context, status=status)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    return _render_keys(request, form=ApiKeyForm())


@require_POST
@login_required
def api_key_create_view(request: HtmxHttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        return _render_keys(request, form=form, status=422 if not request.htmx else 200)
    try:
        _, raw = api_key_create(user=request.user, **form.cleaned_data)
    except AccountsError as error:  # the cap on keys held
        form.add_error(None, str(error))
        return _render_keys(request, form=form, status=error.status_code if not request.htmx else 200)
    return _render_keys(request, form=ApiKeyForm(), new_key=raw)


@require_POST
@login_required
def api_key_revoke_view(request: HtmxHttpRequest, key_id: int) -> HttpResponse:
    api_key_revoke(api_key=api_key_get_for_user(user=request.user, key_id=key_id))
    if not request.htmx:
        return redirect("dashboard")
    return _render_keys(request, form=ApiKeyForm())

