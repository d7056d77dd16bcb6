"""Edge security's pure parts: network lists, counting units, block-list names."""

from __future__ import annotations

import ipaddress

import pytest

from colony_edge.security.dnsbl import DnsblZone, _is_listing, parse_zones, query_name
from colony_edge.security.networks import NetworkList, counting_unit, parse_address


def test_network_lists_match_v4_v6_and_mapped_addresses():
    nets = NetworkList.parse("192.0.2.0/24, 2001:db8::/32, 198.51.100.7")
    assert "192.0.2.200" in nets
    assert "::ffff:192.0.2.9" in nets           # dual-stack socket's view of an IPv4 client
    assert "198.51.100.7" in nets and "198.51.100.8" not in nets
    assert "2001:db8:ffff::1" in nets and "2001:db9::1" not in nets
    assert "not an address" not in nets
    assert not NetworkList.parse("")


def test_bad_network_names_the_key():
    with pytest.raises(ValueError, match="COLONY_EDGE_DENY_NETWORKS: '10.0.0.0/33'"):
        NetworkList.parse("10.0.0.0/33", "COLONY_EDGE_DENY_NETWORKS")


def test_ipv6_clients_are_counted_by_their_slash_64():
    assert counting_unit("2001:db8:1:2:aaaa::1") == counting_unit("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert counting_unit("2001:db8:1:3::1") != counting_unit("2001:db8:1:2::1")
    assert counting_unit("::ffff:192.0.2.1") == "192.0.2.1"
    assert parse_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_block_list_query_names_rfc5782():
    assert query_name(ipaddress.ip_address("192.0.2.99"), "bl.example") == "99.2.0.192.bl.example"
    name = query_name(ipaddress.ip_address("2001:db8:1:2:3:4:567:89ab"), "bl.example")
    assert name == "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example"


def test_block_list_answers_and_zone_weights():
    assert _is_listing("127.0.0.2") and _is_listing("127.0.0.11")
    assert not _is_listing("127.0.0.1")            # RFC 5782: never a listing
    assert not _is_listing("127.255.255.254")      # big lists' "query refused" code
    assert not _is_listing("10.0.0.2")             # misconfigured list
    assert parse_zones("Zen.Example.:3, bl.example") == [DnsblZone("zen.example", 3.0), DnsblZone("bl.example", 1.0)]
    with pytest.raises(ValueError, match="dnsbl_zones"):
        parse_zones("zen.example:lots")


def test_dmarc_org_domain_lookups_share_one_parsed_public_suffix_list(monkeypatch):
    """authheaders parses the whole Public Suffix List per org-domain lookup (up to four per
    message, most of a check's CPU); the edge makes it parse the list once and gives the
    same answers."""
    import authheaders.dmarc_lookup as lookup

    from colony_edge.security import authentication

    assert lookup.get_org_domain_from_suffix_list is authentication._org_domain_from_shared_list
    parsed = []

    class CountingList(authentication.PublicSuffixList):
        def __init__(self, *args, **kwargs):
            parsed.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(authentication, "PublicSuffixList", CountingList)
    monkeypatch.setattr(authentication, "_suffix_lists", {})
    domains = ("mail.example.co.uk", "example.co.uk", "a.b.signer.test", "news.bbc.co.uk", "x.y.example.com")
    answers = {d: lookup.get_org_domain(d) for d in domains}
    assert len(parsed) == 1
    assert answers["mail.example.co.uk"] == "example.co.uk" and answers["x.y.example.com"] == "example.com"
    # the library's own answers: a list parsed afresh from the same file, as authheaders does
    import importlib.resources

    from publicsuffix2 import PublicSuffixList
    with importlib.resources.as_file(importlib.resources.files("authheaders") / "public_suffix_list.txt") as path:
        with open(path) as f:
            fresh = PublicSuffixList(f)
    assert answers == {d: fresh.get_public_suffix(d) for d in domains}


def test_what_a_sender_makes_dkimpy_log_is_debug_not_error(caplog):
    """A key record that does not parse is an ERROR line from dkimpy for every such message;
    the edge keeps it only at DEBUG (the verdict is in Authentication-Results)."""
    import logging

    import dkim

    from colony_edge.security import authentication  # noqa: F401  (installs the filter)

    message = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; c=relaxed/relaxed; h=from;"
               b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\nFrom: a@example.com\r\n\r\n")
    caplog.set_level(logging.INFO)
    assert not dkim.verify(message, dnsfunc=lambda *a, **k: b"v=DKIM1; k=rsa; p=garbage")
    assert not [r for r in caplog.records if r.name == "dkimpy"]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="colony.edge.authentication")
    assert not dkim.verify(message, dnsfunc=lambda *a, **k: b"v=DKIM1; k=rsa; p=garbage")
    assert [r.levelname for r in caplog.records if r.name == "dkimpy"] == ["DEBUG"]
