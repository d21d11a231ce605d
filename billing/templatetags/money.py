"""The one template filter for amounts: {{ account.balance|usd }} → "$2.00"."""

from django import template

from core.money import format_usd

register = template.Library()


@register.filter(name="usd")
def usd_filter(nanos: int | None) -> str:
    return "—" if nanos is None else format_usd(int(nanos))
