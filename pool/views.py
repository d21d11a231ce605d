"""The member's provider-keys page: their keys with counters and a 30-day chart, add a key, and the
owner's moves (deactivate, remove, revalidate, reactivate). Thin: parse, call a keys service, render.

It lives in pool, above keys, because the chart is what each key served through the gateway (pool's
request records): keys may not import pool. The keys it lists and changes are keys' own, through
keys' selectors and services."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from keys.forms import ProviderKeyForm
from keys.models import ProviderKey
from keys.selectors import provider_key_get_for_user, provider_key_list_for_user
from keys.services import (
    ProviderKeyError,
    provider_key_create,
    provider_key_deactivate,
    provider_key_reactivate,
    provider_key_revalidate,
)
from pool.selectors import key_daily_series

CHART_DAYS = 30
CHART_HEIGHT = 24  # px of the tallest bar in a key's daily chart
BAR_STEP = 3  # px per day: a 2px bar and a 1px gap

# The owner's moves on one of their keys: URL segment → keys service call.
KEY_ACTIONS = {
    "deactivate": lambda *, key, actor: provider_key_deactivate(key=key, actor=actor, remove=False),
    "remove": lambda *, key, actor: provider_key_deactivate(key=key, actor=actor, remove=True),
    "revalidate": provider_key_revalidate,
    "reactivate": provider_key_reactivate,
}


def _daily_bars(key_id: int) -> list[dict]:
    """One bar per day of the last CHART_DAYS days (days without traffic included), scaled to the busiest."""
    served = {row["day"]: row["requests"] for row in key_daily_series(key_id=key_id, days=CHART_DAYS)}
    today = timezone.localdate()
    days = [today - timedelta(days=back) for back in range(CHART_DAYS - 1, -1, -1)]
    busiest = max((served.get(day, 0) for day in days), default=0) or 1
    bars = []
    for index, day in enumerate(days):
        height = round(CHART_HEIGHT * served.get(day, 0) / busiest)
        bars.append({"day": day, "requests": served.get(day, 0), "x": index * BAR_STEP, "y": CHART_HEIGHT - height,
                     "height": height})
    return bars


def _render(request: HttpRequest, *, form: ProviderKeyForm | None = None, error: str = "", status: int = 200):
    keys = list(provider_key_list_for_user(user=request.user))
    context = {
        "form": form or ProviderKeyForm(),
        "error": error,
        "rows": [{"key": key, "bars": _daily_bars(key.pk)} for key in keys],
        "chart": {"days": CHART_DAYS, "width": CHART_DAYS * BAR_STEP, "height": CHART_HEIGHT},
        "Status": ProviderKey.Status,
        "live_states": ProviderKey.LIVE_STATES,
        # A failed or exhausted key shows why, and may be verified again.
        "retry_states": (ProviderKey.Status.FAILED, ProviderKey.Status.EXHAUSTED),
    }
    template = "pool/provider_keys.html#keys" if request.htmx else "pool/provider_keys.html"
    return render(request, template, context, status=status)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def provider_keys_page(request: HttpRequest) -> HttpResponse:
    return _render(request)


@require_POST
@login_required
@sensitive_post_parameters("secret")
@sensitive_variables()  # every local here may hold the secret (the form's data does)
def provider_key_add_view(request: HttpRequest) -> HttpResponse:
    form = ProviderKeyForm(request.POST)
    if form.is_valid():
        try:
            key = provider_key_create(owner=request.user, actor=request.user, **form.cleaned_data)
        except ProviderKeyError as error:
            form.add_error(None, str(error))
        else:
            if not request.htmx:
                messages.success(request, f"Key {key} added: it is being verified with {key.provider.name}.")
                return redirect("provider_keys_page")
            return _render(request)
    # htmx swaps only 2xx answers; a plain form post says "refused" with 422.
    return _render(request, form=form, status=200 if request.htmx else 422)


@require_POST
@login_required
def provider_key_action_view(request: HttpRequest, key_id: int, action: str) -> HttpResponse:
    key = provider_key_get_for_user(user=request.user, key_id=key_id)
    error = ""
    try:
        KEY_ACTIONS[action](key=key, actor=request.user)
    except ProviderKeyError as refusal:
        error = str(refusal)
    if request.htmx:
        return _render(request, error=error)
    if error:
        messages.error(request, error)
    return redirect("provider_keys_page")
