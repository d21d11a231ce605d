from django.conf import settings

from demo import world


def demo(request) -> dict:
    """The demo member's published API key, for the banner on every page they see (local settings only)."""
    user = getattr(request, "user", None)
    if settings.HEADROOM_DEMO_PROVIDER and user is not None and user.is_authenticated and user.email == world.MEMBER_EMAIL:
        return {"demo_api_key": world.API_KEY}
    return {}
