"""CIDR allow and deny lists (``colony.netaddr.NetworkList``, and the unit a client address
is counted by: ``colony.netaddr.counting_unit``), under the names the edge's security code
imports them by.

A list is written as in settings: ``"192.0.2.0/24, 2001:db8::/32, 198.51.100.7"``.
IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack socket reports) are
matched as the IPv4 address they carry.
"""

from __future__ import annotations

from colony.netaddr import IPAddress, IPNetwork, NetworkList, counting_unit, parse_address

__all__ = ["IPAddress", "IPNetwork", "NetworkList", "counting_unit", "parse_address"]
