"""Member pages that show balances. Thin: parse, call a service, render."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.forms import OrganizationForm
from accounts.selectors import organization_list
from accounts.services import AccountsError, organization_create
from billing.selectors import balances_for_owner


@require_http_methods(["GET", "POST"])
@login_required
def organizations(request: HttpRequest) -> HttpResponse:
    """The member's organizations as billing owners: role, members and each one's balance."""
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organization_create(owner=request.user, name=form.cleaned_data["name"])
            return redirect("organizations")
        except AccountsError as refused:
            form.add_error("name", str(refused))
    rows = [
        {
            "organization": org,
            "role": org.memberships.get(user=request.user).get_role_display(),
            "members": org.memberships.count(),
            "balance": balances_for_owner(owner=org).main,
        }
        for org in organization_list(user=request.user)
    ]
    return render(request, "billing/organizations.html", {"form": form, "rows": rows})
