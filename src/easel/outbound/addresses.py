"""Which IP addresses the server may connect to on a user's or a provider's say-so.

An address is *public* when IANA says it is globally reachable. The tables below are the IANA
IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and its updates, as published in
2025) with their "Globally Reachable" column, plus the blocks the general address-space
registries set apart (IPv4 multicast ``224.0.0.0/4``; in IPv6 everything outside the global
unicast space ``2000::/3``). The most specific entry that holds an address decides, so
``192.0.0.192`` (in ``192.0.0.0/24``: not reachable; a cloud metadata address) is refused
while the anycast ``192.0.0.9/32`` inside it is not. An address in no entry is public.

The tables are ours, not Python's ``ipaddress.is_global``, whose answers differ between
Python releases (3.11 counts ``192.0.0.192`` as global; 3.12.4 and later do not).

An IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:0:0/96``, 6to4 ``2002::/16``,
the NAT64 well-known prefix ``64:ff9b::/96``) is judged by the IPv4 address it carries.
The operator's ``allow_outbound_cidrs`` are allowed whatever the registries say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (block, globally reachable). "N/A" rows of the registries are listed as not reachable.
_IPV4: tuple[tuple[str, bool], ...] = (
    ("0.0.0.0/8", False),  # "this network"
    ("10.0.0.0/8", False),  # private use
    ("100.64.0.0/10", False),  # shared address space (carrier-grade NAT)
    ("127.0.0.0/8", False),  # loopback
    ("169.254.0.0/16", False),  # link local, with 169.254.169.254 (cloud metadata)
    ("172.16.0.0/12", False),  # private use
    ("192.0.0.0/24", False),  # IETF protocol assignments (192.0.0.192: Oracle Cloud metadata)
    ("192.0.0.9/32", True),  # port control protocol anycast
    ("192.0.0.10/32", True),  # traversal using relays around NAT anycast
    ("192.0.2.0/24", False),  # documentation (TEST-NET-1)
    ("192.31.196.0/24", True),  # AS112-v4
    ("192.52.193.0/24", True),  # AMT
    ("192.88.99.0/24", False),  # deprecated 6to4 relay anycast
    ("192.168.0.0/16", False),  # private use
    ("192.175.48.0/24", True),  # direct delegation AS112 service
    ("198.18.0.0/15", False),  # benchmarking
    ("198.51.100.0/24", False),  # documentation (TEST-NET-2)
    ("203.0.113.0/24", False),  # documentation (TEST-NET-3)
    ("224.0.0.0/4", False),  # multicast (IPv4 multicast address space registry)
    ("240.0.0.0/4", False),  # reserved, with 255.255.255.255 (limited broadcast)
)
_IPV6: tuple[tuple[str, bool], ...] = (
    ("::/0", False),  # outside 2000::/3: loopback, unspecified, multicast, ULA, link local…
    ("2000::/3", True),  # global unicast
    ("2001::/23", False),  # IETF protocol assignments
    ("2001::/32", False),  # Teredo
    ("2001:1::1/128", True),  # port control protocol anycast
    ("2001:1::2/128", True),  # traversal using relays around NAT anycast
    ("2001:1::3/128", True),  # DNS-SD service registration protocol anycast
    ("2001:2::/48", False),  # benchmarking
    ("2001:3::/32", True),  # AMT
    ("2001:4:112::/48", True),  # AS112-v6
    ("2001:10::/28", False),  # deprecated ORCHID
    ("2001:20::/28", True),  # ORCHIDv2
    ("2001:30::/28", True),  # drone remote ID protocol entity tags
    ("2001:db8::/32", False),  # documentation
    ("2620:4f:8000::/48", True),  # direct delegation AS112 service
    ("3fff::/20", False),  # documentation
    ("5f00::/16", False),  # segment routing (SRv6) SIDs
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _table(rows: tuple[tuple[str, bool], ...]) -> tuple[tuple[IPNetwork, bool], ...]:
    """The rows, most specific block first, so the first match is the one that decides."""
    parsed = [(ipaddress.ip_network(block), reachable) for block, reachable in rows]
    return tuple(sorted(parsed, key=lambda row: row[0].prefixlen, reverse=True))


_REGISTRY = {4: _table(_IPV4), 6: _table(_IPV6)}


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), else None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True when the IANA registries say ``address`` is globally reachable."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return is_public(embedded)
    for network, reachable in _REGISTRY[address.version]:
        if address in network:
            return reachable
    return True


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which addresses the server may connect to: public ones, plus ``allow_cidrs``."""

    allow_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, cidrs: Sequence[str]) -> OutboundPolicy:
        """Build from CIDR strings such as ``"127.0.0.0/8"`` (ValueError when malformed)."""
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs))

    def address_allowed(self, address: IPAddress) -> bool:
        """True for a public address or one inside an allowed network."""
        if any(address.version == net.version and address in net for net in self.allow_cidrs):
            return True
        embedded = embedded_ipv4(address)
        if embedded is not None and self.address_allowed(embedded):
            return True
        return is_public(address)
