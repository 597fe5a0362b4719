"""The guard in conftest.py: tests cannot reach anything outside loopback."""

from __future__ import annotations

import ipaddress
import socket

import httpx
import pytest

from conftest import OutboundConnectionBlocked, reachable


@pytest.mark.parametrize("address", [("93.184.216.34", 80), ("10.0.0.1", 443), ("::2", 80)])
def test_a_raw_connection_outside_loopback_fails_the_test(address: tuple[str, int]) -> None:
    with pytest.raises(OutboundConnectionBlocked):
        socket.create_connection(address, timeout=1)


async def test_an_http_client_cannot_reach_a_public_address() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises((OutboundConnectionBlocked, BaseExceptionGroup)) as caught:
            await client.get("http://93.184.216.34/")
    blocked = isinstance(caught.value, OutboundConnectionBlocked) or (
        isinstance(caught.value, BaseExceptionGroup)
        and caught.group_contains(OutboundConnectionBlocked, depth=None)
    )
    assert blocked, caught.value


def test_a_network_the_test_made_is_reachable_only_meanwhile() -> None:
    # UDP: connect() only picks the route; no packet leaves the machine.
    made = ipaddress.ip_network("10.77.254.0/24")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, reachable(made):
        udp.connect(("10.77.254.9", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(OutboundConnectionBlocked):
            udp.connect(("10.77.254.9", 9))
        with pytest.raises(OutboundConnectionBlocked), reachable(made):
            udp.connect(("10.77.253.9", 9))  # beside it: still outside


def test_only_a_private_network_can_be_made_reachable() -> None:
    with pytest.raises(ValueError, match="private"), reachable(ipaddress.ip_network("93.0.0.0/8")):
        pass
