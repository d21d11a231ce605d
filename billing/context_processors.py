from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from billing.selectors import balances_for_owner


def balances(request: HttpRequest) -> dict:
    """`balances`: the signed-in member's main and frozen balance, for any page that shows them.

    Lazy, so a page that does not show them costs no query. A view's own `balances` (an
    organization's, on the exchange page) takes precedence over this one.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"balances": SimpleLazyObject(lambda: balances_for_owner(owner=user))}
