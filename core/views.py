"""Django's error pages, in the management API's error shape under /api/.

An unknown URL or an unexpected error under /api/ answers JSON ({"detail", "code"}) like every other
API error, so a client never has to parse an HTML page; pages keep Django's own.
"""

from django.http import JsonResponse
from django.views import defaults

API_PREFIX = "/api/"


def not_found(request, exception):
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": "Internal server error.", "code": "server_error"}, status=500)
    return defaults.server_error(request)


def allauth_not_served(request, *args):
    """An allauth endpoint Headroom does not offer, answered in allauth's headless error shape."""
    return JsonResponse({"status": 404, "errors": [{"message": "Not found.", "code": "not_found"}]}, status=404)
