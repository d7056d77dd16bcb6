"""The unit a client address is counted by, for every per-source limit in the cluster (the
edges' sessions and rates, the SIP farm's connections and rates, the admin API's failed
token checks): the IPv4 address, or the IPv6 /64.  One subscriber's LAN is a /64 and an
attacker holds a whole one, so counting single IPv6 addresses would give it a fresh budget
per address.  IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack socket
reports) count as the IPv4 address they carry; a zone (``%eth0``) is dropped.

``NetworkList`` is a list of networks as settings write them (``"192.0.2.0/24,
2001:db8::/32, 198.51.100.7"``): the edges' allow and deny lists, the balancers allowed to
send a PROXY header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress:
    """``ValueError`` for text that is no IP address."""
    address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def counting_unit(address: IPAddress | str) -> str:
    """The key a per-source limit counts ``address`` under; text that is no IP address (a
    Unix socket's peer, "unknown") is its own unit."""
    if isinstance(address, str):
        return _unit_of_text(address)
    if address.version == 6:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@lru_cache(maxsize=4096)
def _unit_of_text(text: str) -> str:
    # Remembered: the SIP farm asks for every new request from a source outside
    # sip_allow_networks, and parsing an address is a few microseconds each time.
    try:
        return counting_unit(parse_address(text))
    except ValueError:
        return text


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
                address = parse_address(address)   # a dual-stack socket's ::ffff:a.b.c.d is a.b.c.d
            except ValueError:
                return False
        return any(address.version == net.version and address in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)
