"""Operator base URLs: https only, never loopback/private/link-local/metadata, unless private upstreams
are allowed; one check used by the model, the admin, the loader and the workers."""

import socket
from unittest import mock

import pytest
from django.core.exceptions import ValidationError

from keys.models import Provider
from keys.upstream import (
    UpstreamRefused,
    check_base_url,
    parse_retry_after,
    resolve_upstream,
)

REFUSED = [
    "http://api.example.com/v1",
    "https://127.0.0.1/v1",
    "https://127.0.0.1:8443/v1",
    "https://127.9.9.9",
    "https://localhost/v1",
    "https://api.localhost/v1",
    "https://169.254.169.254/latest/meta-data",
    "https://metadata.google.internal/computeMetadata/v1",
    "https://10.0.0.1/v1",
    "https://10.255.255.254",
    "https://172.16.0.1",
    "https://192.168.1.10",
    "https://100.64.0.1",
    "https://0.0.0.0",
    "https://[::1]/v1",
    "https://[fe80::1]/v1",
    "https://[fd00:ec2::254]/latest",
    "https://[::ffff:127.0.0.1]/v1",
    "https://[::ffff:169.254.169.254]/v1",
    "https://2130706433/v1",  # 127.0.0.1 as one decimal number
    "https://0x7f.1/v1",
    "https://224.0.0.1",
    "https://user:password@api.example.com/v1",
    "https://api.example.com/v1?redirect=http://127.0.0.1",
    "https://api.example.com/v1#fragment",
    "ftp://api.example.com",
    "file:///etc/passwd",
    "https://",
    "https://api.example.com/v1 ",
    "",
    None,
]


@pytest.fixture
def strict(settings):
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = False


@pytest.mark.parametrize("url", REFUSED)
def test_private_plain_http_and_odd_urls_are_refused(url, strict):
    with pytest.raises(UpstreamRefused):
        check_base_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "https://10.0.0.1/v1", "https://169.254.169.254/x"])
def test_every_rule_yields_when_private_upstreams_are_allowed(url, settings):
    settings.HEADROOM_ALLOW_PRIVATE_UPSTREAMS = True
    assert check_base_url(url) == url
    assert resolve_upstream(url).connect_url == url


@pytest.mark.parametrize("url", ["https://8.8.8.8/v1", "https://[2001:4860:4860::8888]/v1"])
def test_public_addresses_are_accepted(url, strict):
    assert check_base_url(url) == url


def _resolving_to(*addresses):
    infos = [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 443)) for a in addresses]
    return mock.patch("keys.upstream.socket.getaddrinfo", return_value=infos)


def test_a_name_resolving_to_a_private_address_is_refused(strict):
    with _resolving_to("93.184.216.34", "10.0.0.5"):
        with pytest.raises(UpstreamRefused, match="loopback, private, link-local or metadata"):
            check_base_url("https://rebind.example.com/v1")


def test_a_name_resolving_to_public_addresses_is_accepted(strict):
    with _resolving_to("93.184.216.34"):
        assert check_base_url("https://api.example.com/v1") == "https://api.example.com/v1"
        vetted = resolve_upstream("https://api.example.com/v1/models")
    assert vetted.connect_url == "https://93.184.216.34/v1/models"
    assert (vetted.server_name, vetted.host_header) == ("api.example.com", "api.example.com")


def test_an_unresolvable_name_is_saved_but_not_called(strict):
    with mock.patch("keys.upstream.socket.getaddrinfo", side_effect=socket.gaierror("no such host")):
        assert check_base_url("https://api.not-yet-live.example/v1")
        with pytest.raises(OSError):
            resolve_upstream("https://api.not-yet-live.example/v1/models")


def test_a_name_that_changes_to_a_private_address_is_refused_at_call_time(strict):
    with _resolving_to("127.0.0.1"):
        with pytest.raises(UpstreamRefused):
            resolve_upstream("https://api.example.com/v1/models")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["https://127.0.0.1/v1", "https://169.254.169.254", "https://10.1.2.3/v1", "http://api.example.com/v1"]
)
def test_the_model_refuses_them_in_full_clean(url, strict):
    provider = Provider(slug="bad", name="Bad", base_url=url)
    with pytest.raises(ValidationError) as refused:
        provider.full_clean()
    assert "base_url" in refused.value.message_dict


@pytest.mark.parametrize(
    ("header", "expected"),
    [("30", 30.0), ("1.5", 1.5), ("-4", 0.0), ("soon", None), ("", None), (None, None), ("nan", None)],
)
def test_retry_after_parsing(header, expected):
    assert parse_retry_after(header) == expected


def test_retry_after_as_an_http_date():
    from datetime import timedelta
    from email.utils import format_datetime

    from django.utils import timezone

    when = timezone.now() + timedelta(seconds=90)
    assert 85 <= parse_retry_after(format_datetime(when, usegmt=True)) <= 91


# One address per special-purpose block (IANA's registries) that is never an upstream, as a literal
# host and as what a name resolves to; each is refused for verification and for the gateway alike
# (both ask keys.upstream.address_is_public).
SPECIAL_PURPOSE = {
    "this network 0.0.0.0/8": "0.1.2.3",
    "loopback": "127.0.0.2",
    "private 10/8": "10.1.2.3",
    "private 172.16/12": "172.31.0.1",
    "private 192.168/16": "192.168.0.1",
    "CGNAT 100.64/10": "100.100.100.200",
    "link-local / metadata": "169.254.169.254",
    "IETF protocol 192.0.0/24": "192.0.0.8",
    "documentation TEST-NET-1": "192.0.2.1",
    "6to4 relay anycast": "192.88.99.1",
    "benchmarking 198.18/15": "198.18.0.1",
    "documentation TEST-NET-3": "203.0.113.9",
    "multicast": "239.1.1.1",
    "reserved 240/4": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "IPv6 unspecified": "::",
    "IPv6 loopback": "::1",
    "IPv4-compatible": "::7f00:1",
    "IPv4-mapped": "::ffff:10.0.0.1",
    "NAT64 well-known": "64:ff9b::a9fe:a9fe",
    "NAT64 local-use": "64:ff9b:1::a00:1",
    "discard-only": "100::1",
    "Teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "documentation 2001:db8": "2001:db8::1",
    "6to4": "2002:7f00:1::1",
    "documentation 3fff::/20": "3fff::1",
    "segment routing": "5f00::1",
    "unique local": "fd00:ec2::254",
    "site-local (deprecated)": "fec0::1",
    "link-local": "fe80::1",
    "multicast v6": "ff02::1",
}


@pytest.mark.parametrize("address", SPECIAL_PURPOSE.values(), ids=SPECIAL_PURPOSE.keys())
def test_every_special_purpose_range_is_refused(address, strict):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UpstreamRefused):
        check_base_url(f"https://{host}/v1")
    with _resolving_to(address):
        with pytest.raises(UpstreamRefused):
            resolve_upstream("https://api.example.com/v1/models")


def test_a_worker_call_connects_to_the_address_it_vetted_not_to_a_second_lookup(strict):
    # the name resolves to a public address when vetted, then (rebinding) to the metadata service
    infos = [
        [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 8443))],
        [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 8443))],
    ]
    with mock.patch("keys.upstream.socket.getaddrinfo", side_effect=infos) as lookups:
        vetted = resolve_upstream("https://api.example.com:8443/v1/models")
    assert lookups.call_count == 1
    # what the HTTP client is given is an address, so it has nothing to look up again
    assert vetted.connect_url == "https://93.184.216.34:8443/v1/models"
    assert (vetted.server_name, vetted.host_header) == ("api.example.com", "api.example.com:8443")
    with _resolving_to("2606:2800:220:1:248:1893:25c8:1946"):
        assert resolve_upstream("https://api.example.com/v1").connect_url == (
            "https://[2606:2800:220:1:248:1893:25c8:1946]/v1"
        )
