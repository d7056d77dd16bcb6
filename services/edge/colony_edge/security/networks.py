"""CIDR allow and deny lists (the unit a client address is counted by: ``colony.netaddr``).

A list is written as in settings: ``"192.0.2.0/24, 2001:db8::/32, 198.51.100.7"``.
IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack socket reports) are
matched as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from colony.netaddr import IPAddress, counting_unit, parse_address

__all__ = ["IPAddress", "IPNetwork", "NetworkList", "counting_unit", "parse_address"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkList:
    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, text: str, key: str = "networks") -> NetworkList:
        """Parse a comma-separated list; ``ValueError`` names ``key`` and the bad entry."""
        nets = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{key}: {item!r} is not an IPv4/IPv6 address or CIDR network "
                                 f"(e.g. 192.0.2.0/24 or 2001:db8::/32)") from None
        return cls(nets)

    def __contains__(self, address: IPAddress | str) -> bool:
        if isinstance(address, str):
            try:
                address = parse_address(address)
            except ValueError:
                return False
        return any(address.version == net.version and address in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)
