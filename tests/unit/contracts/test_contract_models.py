"""Wire models of the edge contracts: round trips, the directory's shape on both sides, the index."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony import events as ev
from colony.bus import names
from colony.contracts import auth, directory, entitlements, recipients
from colony.contracts.cache import DirectoryIndex
from colony_admin import aggregates
from colony_admin.models import Service
from colony_admin.projections.directory import directory_entry


def test_the_projection_writes_what_the_contract_reads():
    """Every kind the admin API publishes parses as its contract model (and keeps no secrets)."""
    created = [
        ("domain", "acme.example", ev.DomainCreated(domain="acme.example", home_region="eu", cos="gold",
                                                    branding={}, storage={"account_foldering": "1-1"})),
        ("address", "amy@acme.example", ev.AccountCreated(
            address="amy@acme.example", domain="acme.example", name="amy", real_name="Amy", password_hash="$argon2id$x",
            sip_ha1={"MD5": "ab"}, cos=None, quota=5, services=["mail"], forwarding=["x@y.example"], state="active")),
        ("address", "team@acme.example", ev.AliasCreated(address="team@acme.example", domain="acme.example",
                                                         name="team", targets=["amy@acme.example"])),
        ("domain_alias", "alt.example", ev.DomainAliasCreated(alias="alt.example", domain="acme.example")),
        ("cos", "gold", ev.CosCreated(name="gold", description="", limits={"services": ["mail"], "quota_bytes": 9})),
    ]
    for kind, name, event in created:
        key, value = directory_entry(kind, name, aggregates.apply(None, event), 7)
        data = orjson.dumps(value)
        parsed = directory.parse_entry(data)
        assert parsed is not None and parsed.seq == 7, kind
        assert b"argon2" not in data and b"sip_ha1" not in data
        assert key == names.directory_key(kind, name)
    account = directory.parse_entry(orjson.dumps(directory_entry("address", "amy@acme.example", aggregates.apply(
        None, created[1][2]), 7)[1]))
    assert account.info() == directory.AccountInfo("amy@acme.example", "active", None, 5, ("mail",), ("x@y.example",),
                                                   False)
    key, tomb = directory_entry("address", "amy@acme.example", None, 8)
    assert directory.parse_entry(orjson.dumps(tomb)) is None


def test_unknown_fields_are_ignored_and_bad_values_named():
    e = directory.parse_entry(b'{"kind":"domain","name":"a.example","state":"active","new_field":1,"seq":3}')
    assert isinstance(e, directory.DomainEntry) and e.name == "a.example"
    for bad in (b"[1]", b"{", b'{"kind":"nope"}', b'{"kind":"account"}'):
        with pytest.raises(directory.BadEntry):
            directory.parse_entry(bad)


def test_lookup_and_recipient_messages_round_trip():
    req = directory.DirectoryLookupRequest(kind="address", name="amy@acme.example")
    assert directory.DirectoryLookupRequest.from_bytes(req.to_bytes()) == req
    assert orjson.loads(req.to_bytes()) == {"kind": "address", "name": "amy@acme.example"}
    rep = directory.DirectoryLookupReply(found=True, entry=directory.DomainEntry(name="a.example", seq=2))
    assert directory.DirectoryLookupReply.from_bytes(rep.to_bytes()) == rep
    assert orjson.loads(directory.DirectoryLookupReply(found=False).to_bytes()) == {"found": False}

    accepted = recipients.Accepted("Amy@a.example", (recipients.Mailbox("amy@a.example", "a.example", "eu"),), ())
    refused = recipients.Refused("x@a.example", recipients.Refusal.UNKNOWN_USER)
    reply = recipients.RecipientsReply(results=[recipients.RecipientResult.of(accepted),
                                                recipients.RecipientResult.of(refused)])
    wire = orjson.loads(reply.to_bytes())
    assert wire["results"][1] == {"recipient": "x@a.example", "ok": False, "mailboxes": [], "remote": [],
                                  "code": 550, "status": "5.1.1", "reason": "unknown_user",
                                  "text": "no such user here"}
    back = recipients.RecipientsReply.from_bytes(reply.to_bytes())
    assert [r.resolution() for r in back.results] == [accepted, refused]
    with pytest.raises(ValueError):
        recipients.RecipientsRequest(recipients=[])
    with pytest.raises(ValueError):
        recipients.RecipientsRequest(recipients=["a@b.c"] * 1001)


def test_auth_messages_round_trip():
    req = auth.AuthCheckRequest(user="amy@acme.example", password="pw", service="imap", remote_addr="192.0.2.1")
    assert auth.AuthCheckRequest.from_bytes(req.to_bytes()) == req
    ok = auth.AuthCheckReply(ok=True, account="amy@acme.example", domain="acme.example", services=["mail", "imap"],
                             quota_bytes=None, max_message_bytes=10, max_recipients_per_message=None,
                             sending_rate_per_hour=None)
    assert auth.AuthCheckReply.from_bytes(ok.to_bytes()) == ok
    no = auth.AuthCheckReply.refused(auth.AuthFailure.THROTTLED, retry_after=2.5)
    assert orjson.loads(no.to_bytes()) == {"ok": False, "reason": "throttled", "retry_after": 2.5}
    sip = auth.SipCredentialsRequest(user="amy", realm="acme.example", algorithm="SHA-256")
    assert auth.SipCredentialsRequest.from_bytes(sip.to_bytes()) == sip
    rep = auth.SipCredentialsReply(ok=True, username="amy", realm="acme.example", algorithm="SHA-256", ha1="ff")
    assert auth.SipCredentialsReply.from_bytes(rep.to_bytes()) == rep
    # a client that sends lower case gets the canonical name
    assert auth.SipCredentialsRequest.from_bytes(b'{"user":"a","realm":"b.example","algorithm":"md5"}').algorithm == "MD5"


def test_entitlement_services_match_the_api_enum():
    assert entitlements.SERVICES == tuple(s.value for s in Service)


def test_index_follows_puts_tombstones_and_deletes():
    ix = DirectoryIndex()
    key = names.directory_key("address", "amy@acme.example")
    ix.apply(key, b'{"kind":"account","address":"amy@acme.example","domain":"acme.example","name":"amy",'
                  b'"state":"active","quota_bytes":123456789}')
    assert ix.address("amy@acme.example").quota_bytes == 123456789
    ix.apply(key, b'{"kind":"account","address":"amy@acme.example","domain":"acme.example","name":"amy",'
                  b'"state":"disabled"}')
    assert ix.address("amy@acme.example").state == "disabled"
    ix.apply(key, b'{"deleted":true,"seq":9}')
    assert ix.address("amy@acme.example") is None
    ix.apply(key, b'{"kind":"alias","targets":["b@c.example"]}')
    ix.apply(key, None)  # a KV delete
    assert ix.address("amy@acme.example") is None and len(ix) == 0
    # odd characters in a name go through the exact decoder
    odd = "o_d+d@acme.example"
    ix.apply(names.directory_key("address", odd), b'{"kind":"alias","targets":["b@c.example"]}')
    assert ix.address(odd).targets == ("b@c.example",)
    ix.apply("address.garbage", b"not json")
    assert ix.bad_entries == 1


def test_index_interns_repeated_values():
    ix = DirectoryIndex()
    for i in range(3):
        ix.apply(names.directory_key("address", f"u{i}@a.example"),
                 orjson.dumps({"kind": "account", "state": "active", "cos": "gold", "services": ["mail", "imap"],
                               "quota_bytes": 10**10}))
    a, b = ix.address("u0@a.example"), ix.address("u2@a.example")
    assert a.services is b.services and a.quota_bytes is b.quota_bytes and a.cos is b.cos


def test_cache_metrics_are_read_at_scrape_time():
    from colony.contracts.cache import DirectoryCache
    from colony.metrics import Metrics

    cache = DirectoryCache(nc=None)
    metrics = Metrics(with_process=False)
    metrics.add_callback(cache.metrics)
    cache.apply(names.directory_key("address", "u@a.example"), b'{"kind":"alias","targets":["b@c.example"]}')
    text = metrics.render().decode()
    assert 'colony_directory_cache_entries{kind="addresses"} 1.0' in text
    assert "colony_directory_cache_loaded 0.0" in text


def test_deferred_entries_parse_on_first_use_or_in_compaction():
    ix = DirectoryIndex()
    for i in range(5):
        ix.apply(names.directory_key("address", f"u{i}@a.example"),
                 b'{"kind":"account","state":"active","forwarding":["x@b.example"]}', defer=True)
    ix.apply(names.directory_key("address", "bad@a.example"), b'{"kind":"account",', defer=True)
    ix.apply(names.directory_key("address", "u4@a.example"), b'{"deleted":true,"seq":3}', defer=True)
    assert len(ix) == 5 and ix.address("u4@a.example") is None
    assert ix.address("u0@a.example").forwarding == ("x@b.example",)  # parsed on first use
    assert ix.compact(budget=2) > 0
    assert ix.compact() == 0
    assert all(type(v) is not bytes for v in ix._addresses.values())
    assert ix.address("bad@a.example") is None and ix.bad_entries == 1 and len(ix) == 4


def test_feed_position_accepts_only_the_next_delivery():
    from colony.contracts.cache import FeedPosition

    p = FeedPosition()
    assert p.accept("$JS.ACK.KV_directory.c1.1.10.1.1700000000000000000.5") == 5
    assert (p.stream_seq, p.consumer_seq) == (10, 1)
    # the v2 form (JetStream domain and account hash, then a random token)
    assert p.accept("$JS.ACK.hub.ACCHASH.KV_directory.c1.1.12.2.1700000000000000000.0.xyz") == 0
    assert p.stream_seq == 12
    assert p.accept("$JS.ACK.KV_directory.c1.1.20.4.1700000000000000000.0") is None  # cseq 3 went missing
    assert (p.stream_seq, p.consumer_seq) == (12, 2)  # a reset starts after the last one applied
    assert p.heard_up_to(2) and not p.heard_up_to(3)
    with pytest.raises(ValueError):
        p.accept("_INBOX.abc")


_ops = st.lists(st.tuples(st.sampled_from([f"u{i}@a.example" for i in range(6)]),
                          st.sampled_from(["active", "disabled", "alias", "tombstone", "delete"]),
                          st.booleans(), st.booleans()), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_index_ends_where_the_last_write_says_whatever_was_deferred(ops):
    """Any sequence of writes, some kept as JSON (cold start) and compacted at any point,
    leaves each address exactly as its last write says."""
    ix, last = DirectoryIndex(), {}
    for address, what, defer, compact_now in ops:
        key = names.directory_key("address", address)
        if what == "delete":
            ix.apply(key, None, defer=defer)
            last[address] = None
        elif what == "tombstone":
            ix.apply(key, b'{"deleted":true,"seq":1}', defer=defer)
            last[address] = None
        elif what == "alias":
            ix.apply(key, b'{"kind":"alias","targets":["x@b.example"]}', defer=defer)
            last[address] = "alias"
        else:
            ix.apply(key, orjson.dumps({"kind": "account", "state": what}), defer=defer)
            last[address] = what
        if compact_now:
            ix.compact(budget=2)
    for address, expect in last.items():
        got = ix.address(address)
        if expect is None:
            assert got is None
        elif expect == "alias":
            assert got.targets == ("x@b.example",)
        else:
            assert got.state == expect
    assert len(ix) == sum(1 for v in last.values() if v is not None)
    ix.compact()
    assert ix.uncompacted == 0
