"""colony.dns against the loopback DNS server: the resolver obeys Settings.dns_servers."""

from __future__ import annotations

import dns.resolver
import pytest

from colony.dns import make_resolver, parse_servers
from colony.settings import Settings


def test_parse_servers():
    assert parse_servers("") == []
    assert parse_servers("127.0.0.1:5353, 10.0.0.1") == [("127.0.0.1", 5353), ("10.0.0.1", 53)]
    assert parse_servers("[::1]:5300,::1") == [("::1", 5300), ("::1", 53)]


async def test_resolver_uses_configured_server(dns_server):
    dns_server.add('acme.example. 60 IN TXT "colony-verify=abc"', "mx.acme.example. 60 IN A 127.0.0.9")
    resolver = make_resolver(Settings(dns_servers=dns_server.address))
    answer = await resolver.resolve("acme.example", "TXT")
    assert [b"".join(r.strings) for r in answer] == [b"colony-verify=abc"]
    assert [r.address for r in await resolver.resolve("mx.acme.example", "A")] == ["127.0.0.9"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("nothing.acme.example", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("acme.example", "MX")
    dns_server.remove("acme.example", "TXT")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("acme.example", "TXT")
