"""The guard in conftest.py: tests cannot reach anything outside loopback."""

from __future__ import annotations

import socket

import httpx
import pytest

from conftest import OutboundConnectionBlocked


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
