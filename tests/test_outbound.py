"""The outbound rules: which addresses are public, where credentials may go, and the guarded
transport that applies both to every request and redirect hop, against real loopback servers.

Loopback is 127.0.0.0/8 on Linux, so one test can run an "allowed outsider" on 127.0.0.2
(allowed by ``allow_outbound_cidrs``) and an "internal service" on 127.0.0.3 (not allowed).
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from starlette.responses import RedirectResponse

from easel.backends.bfl import Options as BflOptions
from easel.outbound import (
    CredentialScope,
    GuardedTransport,
    OutboundPolicy,
    OutboundRefused,
    find_refusal,
    guarded_client,
    is_public,
)
from loopback import Peer

# -- the IANA special-purpose registries --------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("192.0.0.192", False),  # IETF protocol assignments: Oracle Cloud's metadata address
        ("192.0.0.9", True),  # ...but its PCP anycast /32 is globally reachable
        ("192.0.0.170", False),  # NAT64/DNS64 discovery
        ("169.254.169.254", False),  # link local: AWS/GCP/Azure metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("100.100.100.200", False),  # Alibaba Cloud metadata, inside 100.64/10
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("0.1.2.3", False),  # "this network"
        ("192.0.2.1", False),  # documentation
        ("198.18.0.1", False),  # benchmarking
        ("198.51.100.7", False),
        ("203.0.113.9", False),
        ("192.88.99.1", False),  # deprecated 6to4 relay anycast
        ("192.31.196.1", True),  # AS112
        ("224.0.0.1", False),  # multicast
        ("239.255.255.250", False),
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("2606:4700:4700::1111", True),
        ("2001:4860:4860::8888", True),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),  # AWS's IPv6 metadata address (unique local)
        ("ff02::1", False),
        ("fec0::1", False),  # deprecated site local
        ("2001:db8::1", False),  # documentation
        ("3fff::1", False),  # documentation (RFC 9637)
        ("2001::1", False),  # Teredo
        ("2001:2::1", False),  # benchmarking
        ("2001:20::1", True),  # ORCHIDv2
        ("5f00::1", False),  # SRv6 SIDs
        ("100::1", False),  # discard only
        ("64:ff9b:1::1", False),  # local-use IPv4/IPv6 translation
        ("::ffff:10.0.0.1", False),  # IPv4-mapped: judged by the IPv4 address
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", True),
    ],
)
def test_addresses_are_public_as_the_iana_registries_say(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_allowed_networks_override_the_registries() -> None:
    policy = OutboundPolicy.from_strings(["10.1.0.0/16", "fd00::/8"])
    assert policy.address_allowed(ipaddress.ip_address("10.1.2.3"))
    assert policy.address_allowed(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert policy.address_allowed(ipaddress.ip_address("fd00::1"))
    assert not policy.address_allowed(ipaddress.ip_address("10.2.0.1"))
    assert not policy.address_allowed(ipaddress.ip_address("192.0.0.192"))


# -- where credentials may go -------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "url", "allowed"),
    [
        ("https://api.bfl.ai", "https://api.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai", "https://api.eu1.bfl.ai/v1/get_result?id=1", True),  # regional
        ("https://api.bfl.ai", "https://bfl.ai/x", True),
        ("https://api.bfl.ai", "https://delivery-us1.bfl.ai/sample.png", True),
        ("https://api.bfl.ai", "http://api.eu1.bfl.ai/v1/get_result", False),  # downgrade
        ("https://api.bfl.ai", "http://api.bfl.ai/v1/get_result", False),  # other origin
        ("https://api.bfl.ai", "https://api.bfl.ai:8443/x", True),  # a BFL host, any port
        ("https://api.bfl.ai", "https://evil.com/bfl.ai", False),
        ("https://api.bfl.ai", "https://bfl.ai.evil.com/x", False),
        ("https://api.bfl.ai", "https://evilbfl.ai/x", False),
        ("https://api.bfl.ai", "https://169.254.169.254/latest", False),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000/v1/get_result", True),  # its origin
        ("http://127.0.0.1:9000", "http://127.0.0.1:9001/v1/get_result", False),
        ("http://127.0.0.1:9000", "http://api.eu1.bfl.ai/v1/get_result", True),
    ],
)
def test_bfl_key_goes_to_its_origin_and_documented_domains_only(
    base_url: str, url: str, allowed: bool
) -> None:
    scope = CredentialScope.of(base_url, ["x-key"], BflOptions().trusted_hosts)
    assert scope.allows(httpx.URL(url)) is allowed


# -- the transport, against real servers ----------------------------------------------------


OUTSIDER_ALLOWED = OutboundPolicy.from_strings(["127.0.0.2/32"])


async def get(transport: GuardedTransport, url: str, **headers: str) -> httpx.Response:
    async with guarded_client(transport, timeout_s=5, follow_redirects=True) as client:
        return await client.get(url, headers=headers)


async def test_a_private_address_is_refused_before_any_connection(internal: Peer) -> None:
    with pytest.raises(OutboundRefused, match=r"127\.0\.0\.3 is not a public address"):
        await get(GuardedTransport(OutboundPolicy()), f"{internal.url}/x")
    assert internal.seen == []


async def test_every_redirect_hop_is_checked(outsider: Peer, internal: Peer) -> None:
    outsider.routes["/hop"] = RedirectResponse(f"{internal.url}/admin", status_code=302)

    with pytest.raises(OutboundRefused) as refused:
        await get(GuardedTransport(OUTSIDER_ALLOWED), f"{outsider.url}/hop")

    assert refused.value.url == f"{internal.url}/admin"
    assert [path for path, _ in outsider.seen] == ["/hop"]
    assert internal.seen == []


async def test_the_configured_origin_is_exempt_but_nothing_else_on_its_host(
    internal: Peer,
) -> None:
    transport = GuardedTransport(OutboundPolicy(), trusted_origin=internal.url)
    assert (await get(transport, f"{internal.url}/ok")).status_code == 200
    other_port = internal.url.rsplit(":", 1)[0] + ":1"
    with pytest.raises(OutboundRefused):
        await get(transport, f"{other_port}/x")


async def test_credentials_reach_the_origin_and_never_an_untrusted_host(
    outsider: Peer, internal: Peer
) -> None:
    internal.routes["/poll"] = RedirectResponse(f"{outsider.url}/steal", status_code=307)
    scope = CredentialScope.of(internal.url, ["x-key"], ["api.bfl.ai"])
    transport = GuardedTransport(OUTSIDER_ALLOWED, trusted_origin=internal.url, credentials=scope)

    await get(transport, f"{internal.url}/poll", **{"x-key": "sk-secret"})

    ((origin_path, origin_headers),) = internal.seen
    assert (origin_path, origin_headers["x-key"]) == ("/poll", "sk-secret")
    ((stolen_path, stolen_headers),) = outsider.seen
    assert stolen_path == "/steal"
    assert "x-key" not in stolen_headers


async def test_an_https_base_never_sends_its_key_over_plain_http(outsider: Peer) -> None:
    scope = CredentialScope.of("https://api.bfl.ai", ["x-key"], ["127.0.0.2"])
    transport = GuardedTransport(OUTSIDER_ALLOWED, credentials=scope)

    await get(transport, f"{outsider.url}/v1/get_result", **{"x-key": "sk-secret"})

    assert "x-key" not in outsider.seen[0][1]


async def test_the_connection_goes_to_the_checked_address(outsider: Peer, internal: Peer) -> None:
    """The name is resolved once; the socket connects to that answer (no DNS rebinding)."""
    answers = iter([[ipaddress.ip_address("127.0.0.2")], [ipaddress.ip_address("127.0.0.3")]])

    async def rebinding(
        host: str, port: int
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return list(next(answers))

    port = outsider.url.rsplit(":", 1)[1]
    transport = GuardedTransport(OUTSIDER_ALLOWED, resolver=rebinding)
    response = await get(transport, f"http://rebind.example:{port}/x")

    assert response.status_code == 200
    ((_, headers),) = outsider.seen
    assert headers["host"] == f"rebind.example:{port}"
    assert internal.seen == []


def test_a_refusal_is_found_behind_the_wrappers_an_sdk_adds() -> None:
    refusal = OutboundRefused("http://10.0.0.1/", "not public")
    wrapped = RuntimeError("connection error")
    wrapped.__cause__ = refusal
    outer = ValueError("SDK error")
    outer.__context__ = wrapped
    assert find_refusal(outer) is refusal
    assert find_refusal(RuntimeError("other")) is None
