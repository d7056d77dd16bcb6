"""The unit every per-source limit counts a client by (colony.netaddr)."""

from __future__ import annotations

import ipaddress

from colony.netaddr import counting_unit, parse_address


def test_ipv4_is_itself_ipv6_is_its_slash_64_and_mapped_is_the_ipv4():
    assert counting_unit("192.0.2.7") == "192.0.2.7"
    assert counting_unit("2001:db8:1:2:aaaa::1") == counting_unit("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert counting_unit("2001:db8:1:3::1") != counting_unit("2001:db8:1:2::1")
    assert counting_unit("::ffff:192.0.2.7") == "192.0.2.7"
    assert counting_unit("fe80::1%eth0") == "fe80::/64"
    assert counting_unit(ipaddress.ip_address("2001:db8::1")) == "2001:db8::/64"
    assert parse_address(" ::ffff:198.51.100.1 ") == ipaddress.ip_address("198.51.100.1")


def test_text_that_is_no_address_is_its_own_unit():
    assert counting_unit("unknown") == "unknown"
    assert counting_unit("") == ""
