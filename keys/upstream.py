"""The one check on upstream base URLs (SSRF guard), used by the model, the admin, the loader and
the verification workers.

Base URLs are operator data, but an operator's typo or a compromised catalogue file must still not
turn the gateway into a proxy onto the host's own network or the cloud metadata service. A URL is
accepted only when it is `https`, carries no credentials, query or fragment, and its host is not
(and does not resolve to) a non-global address: loopback, RFC 1918/4193 private, link-local
(169.254.169.254 metadata included), CGNAT, multicast, reserved, unspecified, or an IPv6 form that
carries an IPv4 address a router would translate (NAT64, 6to4, IPv4-mapped and -compatible). With
`HEADROOM_ALLOW_PRIVATE_UPSTREAMS` on (tests, local demos against the fake provider) every one of
these rules yields, `http://` included.

Names that do not resolve when an operator saves them are accepted: nothing can be reached through
them, and `resolve_upstream` checks the addresses again right before every worker call (a name can
change what it resolves to after it was saved) and hands back the vetted address to connect to, so
the HTTP client never looks the name up a second time (no DNS-rebinding window). The gateway's own
client does the same through its resolver (pool/upstream.py). No HTTP client here follows redirects.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

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


# Special-purpose blocks (IANA's IPv4 and IPv6 special-purpose registries) that Python's `is_global`
# lets through or that carry an IPv4 address inside an IPv6 one, which a NAT64 or 6to4 router would
# turn into any IPv4 host, the private ones included. No provider's API lives in any of them.
NOT_UPSTREAMS = tuple(
    ipaddress.ip_network(block)
    for block in (
        "0.0.0.0/8",  # "this network"
        "192.0.0.0/24",  # IETF protocol assignments (its few global entries are anycast services)
        "192.88.99.0/24",  # the deprecated 6to4 relay anycast
        "::/96",  # IPv4-compatible (::a.b.c.d), :: and ::1 included
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local-use prefix
        "100::/64",  # discard-only
        "2001::/32",  # Teredo
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fec0::/10",  # deprecated site-local
    )
)


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == block.version and ip in block for block in NOT_UPSTREAMS):
        return False
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


@dataclass(frozen=True)
class VettedUpstream:
    """Where a worker call goes: `connect_url` names the address vetted just now (the name is not looked
    up again); `server_name` is the name to verify the TLS certificate against and `host_header` what
    to send as Host (both None: `connect_url` is the URL as written, for a literal address or with
    private upstreams allowed)."""

    url: str
    connect_url: str
    server_name: str | None = None
    host_header: str | None = None


def resolve_upstream(url: str) -> VettedUpstream:
    """Right before a call: the URL again, with its host resolved now. Raises UpstreamRefused when
    it is not allowed and OSError when the host does not resolve (a transient failure)."""
    _scheme, host, port = _parts(url)
    check_base_url(url, resolve=False)
    if private_upstreams_allowed() or _literal_address(host) is not None:
        return VettedUpstream(url=url, connect_url=url)
    try:
        addresses = _resolve(host, port)
    except UnicodeError:
        raise UpstreamRefused(URL_UNRESOLVABLE.format(host=host)) from None
    if not addresses or not all(address_is_public(a) for a in addresses):
        raise UpstreamRefused(URL_PRIVATE_HOST.format(host=host))
    parts = urlsplit(url)
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return VettedUpstream(
        url=url, connect_url=urlunsplit(parts._replace(netloc=netloc)), server_name=host,
        host_header=host if parts.port is None else f"{host}:{parts.port}",
    )


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
