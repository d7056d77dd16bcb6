"""The Edge-Gate against a real loopback DNS server and a real nats-server: block lists
with weights, SPF/DKIM/DMARC into Authentication-Results, and flow-control limits that
hold across two edges (two gates, one bus)."""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry

from colony.counters import SharedCounters
from colony.dns import make_resolver
from colony.settings import Settings
from colony_edge.security.authentication import use_configured_dns
from colony_edge.security.gate import EdgeGate


def _gate(settings: Settings, counters=None) -> EdgeGate:
    return EdgeGate(settings, counters, make_resolver(settings), CollectorRegistry())


def _refusals(gate: EdgeGate, stage: str, reason: str) -> float:
    return gate.metrics.refusals.labels(stage, reason)._value.get()


async def test_block_lists_score_with_weights(dns_server):
    dns_server.add("7.100.51.198.heavy.example. IN A 127.0.0.2",      # listed by the heavy list
                   "9.100.51.198.light.example. IN A 127.0.0.4",      # listed by the light list only
                   "9.100.51.198.broken.example. IN A 127.255.255.254")  # an error code: not a listing
    settings = Settings(dns_servers=dns_server.address, dnsbl_zones="heavy.example:3, light.example:1, broken.example:5",
                        dnsbl_threshold=3)
    gate = _gate(settings)
    refused = await gate.on_connect("198.51.100.7")
    assert refused and refused.code == 554 and refused.status == "5.7.1" and refused.close
    assert "heavy.example" in refused.text
    assert await gate.on_connect("198.51.100.9") is None              # score 1 < 3
    assert await gate.on_connect("198.51.100.10") is None             # not listed anywhere
    assert _refusals(gate, "connect", "dnsbl") == 1
    assert ("7.100.51.198.heavy.example", "A") in dns_server.queries


async def test_deny_and_allow_networks(dns_server):
    dns_server.add("7.100.51.198.heavy.example. IN A 127.0.0.2")
    settings = Settings(dns_servers=dns_server.address, dnsbl_zones="heavy.example", dnsbl_threshold=1,
                        edge_deny_networks="203.0.113.0/24, 2001:db8:bad::/48", edge_allow_networks="198.51.100.0/28")
    gate = _gate(settings)
    assert (await gate.on_connect("203.0.113.77")).reason == "denied-network"
    assert (await gate.on_connect("2001:db8:bad:1::5")).code == 554
    assert await gate.on_connect("198.51.100.7") is None               # listed, but trusted
    assert gate.trusted("198.51.100.7")


async def test_limits_hold_across_two_edges(js, dns_server):
    settings = Settings(dns_servers=dns_server.address, edge_messages_per_minute_per_ip=10,
                        edge_max_sessions_per_ip=3, edge_recipients_per_minute_per_domain=5)
    counters_a = SharedCounters(js, "edge-a", flush_interval=0.01)
    counters_b = SharedCounters(js, "edge-b", flush_interval=0.01)
    await counters_a.start()
    await counters_b.start()
    try:
        a, b = _gate(settings, counters_a), _gate(settings, counters_b)
        # A client alternating between the edges gets 10 messages in total, not 10 per edge.
        accepted = 0
        for i in range(30):
            gate, counters = (a, counters_a) if i % 2 else (b, counters_b)
            if await gate.on_mail("192.0.2.50") is None:
                accepted += 1
            await counters.flush()
            await _settle(counters_a, counters_b)
        assert accepted == 10
        assert _refusals(a, "mail", "message-rate") + _refusals(b, "mail", "message-rate") == 20
        # Concurrent sessions from one /64 over both edges.
        assert await a.on_connect("2001:db8:5:5::1") is None
        assert await b.on_connect("2001:db8:5:5::2") is None
        assert await a.on_connect("2001:db8:5:5::3") is None
        await counters_a.flush(), await counters_b.flush()
        from cluster_harness import wait_until

        async def b_sees_three():
            return counters_b.concurrent("sessions", "2001:db8:5:5::/64") == 3
        await wait_until(b_sees_three, 10, "edge b to see the sessions on edge a")
        refused = await b.on_connect("2001:db8:5:5::4")
        assert refused and refused.code == 421 and refused.reason == "concurrent-sessions"
        a.on_disconnect("2001:db8:5:5::1")

        async def b_sees_two():
            return counters_b.concurrent("sessions", "2001:db8:5:5::/64") == 2
        await wait_until(b_sees_two, 10, "edge b to see a session end on edge a")
        assert await b.on_connect("2001:db8:5:5::4") is None
        # Recipients per domain, whoever sends them.
        results = [await a.on_rcpt(f"192.0.2.{i}", "Acme.Example") for i in range(1, 8)]
        assert sum(r is None for r in results) == 5
        assert all(r.code == 450 for r in results if r is not None)
    finally:
        await counters_a.stop()
        await counters_b.stop()


async def _settle(*counters: SharedCounters) -> None:
    # What an instance knows is refreshed once it is older than one flush interval.
    import asyncio

    await asyncio.sleep(max(c.flush_interval for c in counters) * 1.5)


def _signed_message(dns_server, domain: str) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    dns_server.add_txt(f"sel._domainkey.{domain}", f"v=DKIM1; k=rsa; p={public}")
    message = (f"From: Alice <alice@{domain}>\r\nTo: bob@acme.example\r\nSubject: invoice\r\n"
               f"Message-ID: <1@{domain}>\r\n\r\nPlease pay.\r\n").encode()
    return dkim.sign(message, b"sel", domain.encode(), private, include_headers=[b"from", b"to", b"subject"]) + message


async def test_spf_dkim_dmarc_results_and_policy(dns_server):
    dns_server.add('sender.test. IN TXT "v=spf1 ip4:192.0.2.1 -all"', '_dmarc.sender.test. IN TXT "v=DMARC1; p=reject"',
                   'quiet.test. IN TXT "v=spf1 ip4:192.0.2.1 -all"', '_dmarc.quiet.test. IN TXT "v=DMARC1; p=quarantine"')
    settings = Settings(dns_servers=dns_server.address, edge_authserv_id="mx.colony.test")
    use_configured_dns(settings)
    gate = _gate(settings)
    signed = _signed_message(dns_server, "sender.test")
    header_section = signed.split(b"\r\n\r\n")[0]

    good = await gate.on_data("192.0.2.1", "mail.sender.test", "alice@sender.test", signed, header_section, [None])
    assert good.refusal is None and not good.quarantine
    assert good.auth.header.startswith("Authentication-Results: mx.colony.test;")
    assert (good.auth.spf, good.auth.dkim, good.auth.dmarc) == ("pass", "pass", "pass")

    # A forged body from an unauthorised address: both fail, DMARC p=reject refuses it...
    forged = signed.replace(b"Please pay.", b"Pay to IBAN XX00 0000.")
    bad = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", forged, header_section, [None])
    assert (bad.auth.spf, bad.auth.dkim, bad.auth.dmarc) == ("fail", "fail", "fail")
    assert "spf=fail" in bad.auth.header and "dkim=fail" in bad.auth.header and "dmarc=fail" in bad.auth.header
    assert bad.refusal and bad.refusal.code == 550 and bad.refusal.status == "5.7.1"
    # ...unless every recipient domain chose only to mark, or to quarantine.
    marked = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", forged, header_section, ["none"])
    assert marked.refusal is None and not marked.quarantine
    junk = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", forged, header_section, ["quarantine"])
    assert junk.refusal is None and junk.quarantine
    # The strictest recipient domain decides for the message.
    strict = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", forged, header_section,
                                ["none", "enforce"])
    assert strict.refusal is not None

    # Too large to hold for DKIM: SPF and DMARC on the header section alone.
    big = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", None, header_section, [None])
    assert big.auth.dkim == "none" and "too large" in big.auth.header and big.auth.dmarc == "fail"
    assert gate.metrics.auth_results.labels("dkim", "fail")._value.get() >= 1


async def test_dns_that_does_not_answer_gives_temperror_not_a_failure():
    # A DNS server address where nothing listens: every lookup times out.
    settings = Settings(dns_servers="127.0.0.1:9", dns_timeout=0.3, edge_authserv_id="mx.colony.test")
    use_configured_dns(settings)
    gate = _gate(settings)
    message = b"From: a@nowhere.test\r\nTo: b@acme.example\r\nSubject: s\r\n\r\nbody\r\n"
    verdict = await gate.on_data("192.0.2.1", "helo.test", "a@nowhere.test", message, message.split(b"\r\n\r\n")[0], [None])
    assert verdict.refusal is None
    assert verdict.auth.header.startswith("Authentication-Results: mx.colony.test;")
    assert verdict.auth.spf in ("temperror", "none") and verdict.auth.dmarc in ("temperror", "none")
    assert verdict.auth.dkim == "none"      # no signature at all: none, not fail (RFC 8601 §2.7.1)


async def test_from_fields_naming_many_domains_cost_no_lookups_and_cannot_hide_a_reject(dns_server):
    """authheaders evaluated DMARC per From address, two DNS queries each: a From: of 50,000
    addresses was 100,000 queries.  Now one evaluation per author domain, and past
    MAX_AUTHOR_DOMAINS none, with the message refused (so one more domain is no way around
    a p=reject)."""
    from colony_edge.security.authentication import MAX_AUTHOR_DOMAINS

    dns_server.add('_dmarc.sender.test. IN TXT "v=DMARC1; p=reject"')
    settings = Settings(dns_servers=dns_server.address, edge_authserv_id="mx.colony.test")
    use_configured_dns(settings)
    gate = _gate(settings)

    def dmarc_queries() -> int:
        return sum(1 for name, _ in dns_server.queries if name.startswith("_dmarc."))

    others = b", ".join(b"x@other%d.test" % i for i in range(MAX_AUTHOR_DOMAINS))
    message = b"From: " + others + b", alice@sender.test\r\nSubject: s\r\n\r\nbody\r\n"
    verdict = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", message,
                                 message.split(b"\r\n\r\n")[0], [None])
    assert verdict.refusal is not None and verdict.refusal.code == 550 and verdict.refusal.reason == "from-domains"
    assert verdict.auth.dmarc == "permerror" and dmarc_queries() == 0
    assert _refusals(gate, "data", "from-domains") == 1

    # Two thousand From fields of one domain: one evaluation, and its p=reject holds.
    head = b"".join(b"From: alice%d@sender.test\r\n" % i for i in range(2000))
    message = head + b"Subject: s\r\n\r\nbody\r\n"
    verdict = await gate.on_data("203.0.113.9", "evil.test", "alice@sender.test", message,
                                 message.split(b"\r\n\r\n")[0], [None])
    assert verdict.auth.dmarc == "fail" and verdict.refusal is not None and verdict.refusal.reason == "dmarc-reject"
    assert dmarc_queries() <= 2


async def test_many_author_domains_follow_the_recipients_dmarc_choice(dns_server):
    """Past MAX_AUTHOR_DOMAINS the message was refused whatever the recipients' domains chose,
    though "quarantine" never refuses and "none" only marks (docs, Settings.dmarc_enforcement)."""
    from colony_edge.security.authentication import MAX_AUTHOR_DOMAINS

    settings = Settings(dns_servers=dns_server.address, edge_authserv_id="mx.colony.test")
    use_configured_dns(settings)
    gate = _gate(settings)
    others = b", ".join(b"x@other%d.test" % i for i in range(MAX_AUTHOR_DOMAINS + 1))
    message = b"From: " + others + b"\r\nSubject: s\r\n\r\nbody\r\n"
    head = message.split(b"\r\n\r\n")[0]
    verdict = await gate.on_data("203.0.113.9", "evil.test", "x@other0.test", message, head, ["quarantine"])
    assert verdict.refusal is None and verdict.quarantine and verdict.auth.dmarc == "permerror"
    verdict = await gate.on_data("203.0.113.9", "evil.test", "x@other0.test", message, head, ["none", None])
    assert verdict.refusal is not None and verdict.refusal.reason == "from-domains"   # None: the default, enforce
    verdict = await gate.on_data("203.0.113.9", "evil.test", "x@other0.test", message, head, ["none"])
    assert verdict.refusal is None and not verdict.quarantine
