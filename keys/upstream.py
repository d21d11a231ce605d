"""The one check on upstream base URLs (SSRF guard), used by the model, the admin, the loader and
the verification workers.

Base URLs are operator data, but an operator's typo or a compromised catalogue file must still not
turn the gateway into a proxy onto the host's own network or the cloud metadata service. A URL is
accepted only when it is `https`, carries no credentials, query or fragment, and its host is not
(and does not resolve to) a non-global address: loopback, RFC 1918/4193 private, link-local
(169.254.169.254 metadata included), CGNAT, multicast, reserved or unspecified. With
`HEADROOM_ALLOW_PRIVATE_UPSTREAMS` on (tests, local demos against the fake provider) every one of
these rules yields, `http://` included.

Names that do not resolve when an operator saves them are accepted: nothing can be reached through
them, and `resolve_upstream` checks the addresses again right before every worker call (a name can
change what it resolves to after it was saved). No HTTP client here follows redirects.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

MAX_URL_LENGTH = 300
BLOCKED_HOSTNAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "instance-data"})

URL_NOT_TEXT = "The base URL must be a non-empty string of at most 300 characters without spaces."
URL_NOT_HTTPS = "The base URL must use https."
URL_NO_HOST = "The base URL has no host."
URL_HAS_EXTRAS = "The base URL must not carry credentials, a query or a fragment."
URL_PRIVATE_HOST = "The base URL's host {host} is a loopback, private, link-local or metadata address."
URL_UNRESOLVABLE = "The upstream host {host} does not resolve."


class UpstreamRefused(ValueError):
    """An upstream URL that must not be called; the message is safe to show."""


def private_upstreams_allowed() -> bool:
    return settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    # Legacy IPv4 spellings that resolvers still accept ("2130706433", "0x7f.1", "127.1").
    try:
        return socket.inet_ntoa(socket.inet_aton(host)) if host.replace(".", "").isalnum() else None
    except OSError:
        return None


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def _parts(url: object) -> tuple[str, str, int]:
    """(scheme, host, port) of a syntactically acceptable URL, else UpstreamRefused."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        raise UpstreamRefused(URL_NOT_TEXT)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UpstreamRefused(URL_NO_HOST) from None
    scheme = parts.scheme.lower()
    if scheme not in {"https", "http"} or (scheme == "http" and not private_upstreams_allowed()):
        raise UpstreamRefused(URL_NOT_HTTPS)
    if not parts.hostname:
        raise UpstreamRefused(URL_NO_HOST)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment or "@" in parts.netloc:
        raise UpstreamRefused(URL_HAS_EXTRAS)
    return scheme, parts.hostname.rstrip(".").lower(), port or (443 if scheme == "https" else 80)


def check_base_url(url: object, *, resolve: bool = True) -> str:
    """Return the URL if an operator may set it, else raise UpstreamRefused.

    With `resolve`, a host name that resolves is refused when any of its addresses is not public; a
    name that does not resolve (yet) passes (see the module docstring).
    """
    _scheme, host, port = _parts(url)
    if private_upstreams_allowed():
        return url  # type: ignore[return-value]
    if host in BLOCKED_HOSTNAMES or host.endswith((".localhost", ".internal")):
        raise UpstreamRefused(URL_PRIVATE_HOST.format(host=host))
    literal = _literal_address(host)
    if literal is not None:
        if not address_is_public(literal):
            raise UpstreamRefused(URL_PRIVATE_HOST.format(host=host))
        return url  # type: ignore[return-value]
    if resolve:
        try:
            addresses = _resolve(host, port)
        except (OSError, UnicodeError):
            return url  # type: ignore[return-value]
        if not all(address_is_public(a) for a in addresses):
            raise UpstreamRefused(URL_PRIVATE_HOST.format(host=host))
    return url  # type: ignore[return-value]


def validate_base_url(url: object, *, field: str | None = None) -> None:
    """`check_base_url` as a Django validator (model `clean`, admin forms, the catalogue loader)."""
    try:
        check_base_url(url)
    except UpstreamRefused as error:
        message = str(error)
        raise ValidationError({field: message} if field else message) from None


def resolve_upstream(url: str) -> str:
    """Right before a call: the URL again, with its host resolved now. Raises UpstreamRefused when
    it is not allowed and OSError when the host does not resolve (a transient failure)."""
    _scheme, host, port = _parts(url)
    check_base_url(url, resolve=False)
    if private_upstreams_allowed() or _literal_address(host) is not None:
        return url
    try:
        addresses = _resolve(host, port)
    except UnicodeError:
        raise UpstreamRefused(URL_UNRESOLVABLE.format(host=host)) from None
    if not addresses or not all(address_is_public(a) for a in addresses):
        raise UpstreamRefused(URL_PRIVATE_HOST.format(host=host))
    return url


def join_url(base_url: str, path: str) -> str:
    """`base_url` + `path`, the way the catalogue documents it: `base_url.rstrip("/") + path`."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        from django.utils import timezone

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = (when - timezone.now()).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
