"""The farm member's registrar and proxy decisions, with the bus replaced by in-memory fakes
(the sipp integration tests run the same code on a real bus)."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from colony.bus import names
from colony.contracts.auth import SipCredentialsReply
from colony.protocols.sip.digest import h, ha1, parse_credentials
from colony.protocols.sip.parser import SipParseError, parse_message
from colony.settings import Settings

from colony_sipfarm.bindings import Binding
from colony_sipfarm.farm import FARM_BRANCH, SipFarm

DOMAIN = "acme.example"
PASSWORD = "s3cret"
ME = ("127.0.0.1", 5060)
PHONE = ("UDP", "192.0.2.7", 5062)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Store:
    def __init__(self, clock) -> None:
        self.sets: dict[str, list[Binding]] = {}
        self.clock = clock
        self.writes = 0

    async def lookup(self, account):
        live = [b for b in self.sets.get(account, []) if b.expires_at > self.clock()]
        return sorted(live, key=lambda b: (-b.q, -b.registered_at))

    async def change(self, account, edit):
        live = [b for b in self.sets.get(account, []) if b.expires_at > self.clock()]
        edited = edit(live)
        if edited is None:      # BindingStore writes nothing then
            return live
        self.writes += 1
        self.sets[account] = edited
        return self.sets[account]


class Dialogs:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def create(self, key, value, msg_ttl=None):
        if key in self.data:
            raise RuntimeError("exists")
        self.data[key] = value

    async def get(self, key):
        from nats.js.errors import KeyNotFoundError

        if key not in self.data:
            raise KeyNotFoundError

        class Entry:
            value, revision = self.data[key], 1
        return Entry

    async def delete(self, key, last=None):
        self.data.pop(key)

    async def purge(self, key, msg_ttl=None):
        self.data.pop(key, None)


class Auth:
    def __init__(self) -> None:
        self.asked = 0

    async def sip_credentials(self, user, realm, algorithm="MD5"):
        self.asked += 1
        local = user.partition("@")[0]
        if local in ("alice", "bob") and realm == DOMAIN:
            return SipCredentialsReply(ok=True, username=local, realm=realm, algorithm=algorithm,
                                       ha1=ha1(algorithm, local, realm, PASSWORD))
        return SipCredentialsReply.refused("unknown user")


class Counters:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    async def hit(self, kind, subject, n=1):
        self.counts[(kind, subject)] = self.counts.get((kind, subject), 0) + n
        return self.counts[(kind, subject)]

    async def rate(self, kind, subject):
        return self.counts.get((kind, subject), 0)


async def answered_call(farm: SipFarm) -> str:
    """alice (UDP 198.51.100.9:5060) calls bob (UDP 192.0.2.7:5062), bob answers: the
    Record-Route header the dialog's in-dialog requests carry."""
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    caller, callee = ("UDP", "198.51.100.9", 5060), ("UDP", "192.0.2.7", 5062)
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    ok, _ = await one(farm, reply(forwarded, 200, "b1"), callee)
    assert ok.status == 200
    return forwarded.headers.get("Record-Route")


def plain_farm(settings: Settings | None = None) -> SipFarm:
    """A member with ``settings`` (default ones), in-memory stores and its clock as ``clock_``
    (the ``farm`` fixture of the modules that need nothing more)."""
    clock = Clock()
    f = SipFarm(settings or Settings(), "sipfarm-1", store=Store(clock), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda event: None, clock=clock)
    f.clock_ = clock
    return f


@pytest.fixture
def farm():
    clock = Clock()
    usage = []

    def publish(event):
        usage.append(event)

    f = SipFarm(Settings(sip_auth_failures_per_minute_per_ip=5), "sipfarm-1", store=Store(clock), dialogs=Dialogs(),
                auth=Auth(), counters=Counters(), secret=b"k" * 32, address=ME, registry=CollectorRegistry(),
                meter=publish, clock=clock)
    f.usage, f.clock_ = usage, clock
    return f


def register(user="alice", contact="sip:alice@192.0.2.7:5062", cseq=1, branch=None, auth="", expires="300",
             extra="", call_id="reg-1", to_user=None) -> bytes:
    branch = branch or "z9hG4bK" + os.urandom(4).hex()
    contact_line = f"Contact: {contact}\r\n" if contact else ""
    return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch={branch}\r\n"
            f"From: <sip:{user}@{DOMAIN}>;tag=f1\r\nTo: <sip:{to_user or user}@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} REGISTER\r\n{contact_line}Expires: {expires}\r\n{auth}{extra}Content-Length: 0\r\n\r\n").encode()


def answer(challenge_response, user, password=PASSWORD, method="REGISTER", uri=f"sip:{DOMAIN}", nc=1,
           header="Authorization"):
    """A client's digest answer to the first challenge of a response."""
    name = "WWW-Authenticate" if header == "Authorization" else "Proxy-Authenticate"
    params = parse_credentials(challenge_response.headers.get(name))
    algorithm = params.get("algorithm", "MD5")
    key = ha1(algorithm, user, params["realm"], password)
    cnonce, nc_text = "abcdef", f"{nc:08x}"
    ha2 = h(algorithm, f"{method}:{uri}")
    response = h(algorithm, f"{key}:{params['nonce']}:{nc_text}:{cnonce}:auth:{ha2}")
    return (f'{header}: Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc={nc_text}, cnonce="{cnonce}"\r\n')


async def one(farm, data, source=PHONE):
    out = await farm.handle(data, source)
    assert len(out) == 1, out
    return parse_message(out[0].data), out[0]


async def forwarded_invite(farm, data, source):
    """An INVITE the farm forwards to one device: 100 Trying to the caller first (§16.2)."""
    out = await farm.handle(data, source)
    assert len(out) == 2, out
    trying = parse_message(out[0].data)
    assert trying.status == 100 and out[0].destination == source
    return parse_message(out[1].data), out[1]


async def registered(farm, user="alice", contact="sip:alice@192.0.2.7:5062", **kw):
    challenge, _ = await one(farm, register(user, contact, **kw))
    assert challenge.status == 401
    kw["cseq"] = kw.get("cseq", 1) + 1
    ok, _ = await one(farm, register(user, contact, auth=answer(challenge, user), **kw))
    return ok


async def test_register_with_digest_stores_the_binding_and_meters_it(farm):
    ok = await registered(farm)
    assert ok.status == 200
    assert ok.headers.get_all("Contact") == ["<sip:alice@192.0.2.7:5062>;expires=300;q=1"]
    [binding] = farm.store.sets["alice@acme.example"]
    assert binding.member == "sipfarm-1" and binding.source == "192.0.2.7:5062" and not binding.nat
    assert [(u.metric, u.account) for u in farm.usage] == [("sip_registrations", "alice@acme.example")]


async def test_a_refresh_asks_no_credentials_while_the_directory_is_watched_and_a_change_asks_again(farm):
    from colony.bus import names
    from colony_sipfarm.credentials import SETTLE, CredentialCache

    clock = Clock()
    farm.credentials = CredentialCache(100, 3600, clock=clock)
    assert (await registered(farm, call_id="r1")).status == 200
    assert (await registered(farm, call_id="r2")).status == 200
    assert farm.auth.asked == 2                  # not watching: nothing remembered
    farm.credentials.watching = True
    clock.now += SETTLE + 1
    for n in range(3, 6):
        assert (await registered(farm, call_id=f"r{n}")).status == 200
    assert farm.auth.asked == 3                  # one lookup, then remembered
    farm.credentials.on_directory_change(names.AGG_ADDRESS, "alice@acme.example")   # e.g. a new password
    clock.now += SETTLE + 1
    assert (await registered(farm, call_id="r6")).status == 200
    assert farm.auth.asked == 4


async def test_unknown_user_and_wrong_password_get_the_same_challenge(farm):
    replies = []
    for user, password in (("alice", "wrong"), ("mallory", PASSWORD)):
        challenge, _ = await one(farm, register(user))
        again, _ = await one(farm, register(user, cseq=2, auth=answer(challenge, user, password)))
        replies.append((again.status, sorted(n for n, _ in again.headers)))
    assert replies[0] == replies[1] and replies[0][0] == 401
    assert farm.store.sets == {}


async def test_failed_authentications_are_throttled_per_source(farm):
    for _ in range(5):
        challenge, _ = await one(farm, register())
        await one(farm, register(cseq=2, auth=answer(challenge, "alice", "wrong")))
    refused, _ = await one(farm, register())
    assert refused.status == 403
    other, _ = await one(farm, register(), source=("UDP", "198.51.100.1", 5060))
    assert other.status == 401


async def test_a_retransmission_gets_the_same_answer_not_a_replay_refusal(farm):
    challenge, _ = await one(farm, register())
    request = register(cseq=2, auth=answer(challenge, "alice"), branch="z9hG4bKsame")
    first, _ = await one(farm, request)
    again, _ = await one(farm, request)
    assert first.status == again.status == 200
    assert farm.metrics.retransmissions._value.get() == 1


async def test_a_replayed_nonce_count_is_challenged_stale(farm):
    challenge, _ = await one(farm, register())
    auth = answer(challenge, "alice")
    assert (await one(farm, register(cseq=2, auth=auth)))[0].status == 200
    replay, _ = await one(farm, register(cseq=3, auth=auth))
    assert replay.status == 401 and "stale=true" in replay.headers.get("WWW-Authenticate")


async def test_several_devices_q_values_unregister_and_wildcard(farm):
    await registered(farm, contact="<sip:alice@192.0.2.7:5062>;q=0.5", call_id="a")
    await registered(farm, contact="<sip:alice@192.0.2.8:5062>;q=0.9", call_id="b")
    best = await farm.store.lookup("alice@acme.example")
    assert [b.contact for b in best] == ["sip:alice@192.0.2.8:5062", "sip:alice@192.0.2.7:5062"]
    ok = await registered(farm, contact="<sip:alice@192.0.2.7:5062>", expires="0", call_id="a", cseq=5)
    assert ok.headers.get_all("Contact") == ["<sip:alice@192.0.2.8:5062>;expires=300;q=0.9"]
    bad = await registered(farm, contact="*", expires="300", call_id="c")
    assert bad.status == 400
    ok = await registered(farm, contact="*", expires="0", call_id="c")
    assert ok.status == 200 and await farm.store.lookup("alice@acme.example") == []


async def test_bindings_expire_and_short_ones_are_refused(farm):
    assert (await registered(farm, expires="10")).status == 423
    assert (await registered(farm, expires="120")).status == 200
    farm.clock_.now += 121
    assert await farm.store.lookup("alice@acme.example") == []


async def test_a_quick_refresh_is_answered_without_a_write_and_names_the_stored_expiry(farm):
    await registered(farm, call_id="r")
    assert farm.store.writes == 1
    farm.clock_.now += 20       # slack: min(60 s, 300 s / 10) = 30 s
    ok = await registered(farm, call_id="r", cseq=3)
    assert farm.store.writes == 1 and ok.headers.get_all("Contact") == ["<sip:alice@192.0.2.7:5062>;expires=280;q=1"]
    farm.clock_.now += 20       # now 40 s later than the stored write: written
    ok = await registered(farm, call_id="r", cseq=5)
    assert farm.store.writes == 2 and ok.headers.get_all("Contact") == ["<sip:alice@192.0.2.7:5062>;expires=300;q=1"]
    # Anything else that changes is written at once: q, a new device, a removal.
    await registered(farm, contact="<sip:alice@192.0.2.7:5062>;q=0.5", call_id="r", cseq=7)
    await registered(farm, contact="<sip:alice@192.0.2.9:5062>", call_id="r", cseq=9)
    await registered(farm, contact="<sip:alice@192.0.2.9:5062>", expires="0", call_id="r", cseq=11)
    assert farm.store.writes == 5
    assert [b.contact for b in await farm.store.lookup("alice@acme.example")] == ["sip:alice@192.0.2.7:5062"]
    assert [s.value for s in farm.metrics.unwritten.collect()[0].samples if s.name.endswith("_total")] == [1]


async def test_scanners_get_no_answer(farm):
    assert await farm.handle(register(extra="User-Agent: friendly-scanner\r\n"), PHONE) == []


def invite(to="bob", cseq=1, auth="", branch="z9hG4bKinv1", call_id="call-1") -> bytes:
    return (f"INVITE sip:{to}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch={branch}\r\n"
            f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:{to}@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@198.51.100.9:5060>\r\nMax-Forwards: 70\r\n{auth}"
            f"Content-Length: 0\r\n\r\n").encode()


async def test_a_call_is_authenticated_forwarded_with_record_route_and_metered(farm):
    caller = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, invite(), caller)
    assert challenge.status == 407
    assert await farm.handle(invite().replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK"), caller) == []
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, out = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert out.destination == ("UDP", "192.0.2.7", 5062)
    assert str(forwarded.uri) == "sip:bob@192.0.2.7:5062"
    route = forwarded.headers.get("Record-Route")      # signed for the dialog (test_route_signature.py)
    assert route.startswith("<sip:127.0.0.1:5060;lr;cf=sipfarm-1;dm=")
    assert forwarded.top_via().branch.startswith(FARM_BRANCH) and "Proxy-Authorization" not in forwarded.headers
    assert forwarded.headers.get("Max-Forwards") == "69"
    # The callee answers: the 200 goes back to the caller, whichever member it reaches.
    ok = (b"SIP/2.0 200 OK\r\n" + b"".join(f"Via: {v}\r\n".encode() for v in forwarded.headers.get_all("Via"))
          + f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: call-1\r\n"
            f"CSeq: 2 INVITE\r\nRecord-Route: {route}\r\n"
            f"Contact: <sip:bob@192.0.2.7:5062>\r\nContent-Length: 0\r\n\r\n".encode())
    response, out = await one(farm, ok, ("UDP", "192.0.2.7", 5062))
    assert out.destination == ("UDP", "198.51.100.9", 5060) and len(response.headers.get_all("Via")) == 1
    # The BYE comes back on the Route and is loose-routed to the callee; the call is metered.
    farm.clock_.now += 42
    bye = (f"BYE sip:bob@192.0.2.7:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKbye\r\n"
           f"Route: {route}\r\n"
           f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: call-1\r\n"
           f"CSeq: 3 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    forwarded, out = await one(farm, bye, caller)
    assert out.destination == ("UDP", "192.0.2.7", 5062) and "Route" not in forwarded.headers
    assert [(u.metric, u.amount) for u in farm.usage if u.metric == "sip_call_seconds"] == [("sip_call_seconds", 42.0)]


async def test_phones_behind_nat_get_the_dialogs_requests_where_their_packets_come_from(farm):
    """A phone behind NAT over UDP writes a private Contact: the ACK of the 200, a BYE, a
    re-INVITE sent there never arrive (the callee then drops the call after resending its 200,
    RFC 3261 §13.3.1.4).  The Record-Route names each NAT'd party's source (fc/fe, signed) and
    in-dialog requests go there -- chosen by the request's tags, so a phone whose NAT changed
    its port mid-call still reaches the other party."""
    bob_nat = ("UDP", "192.0.2.7", 5062)
    challenge, _ = await one(farm, register("bob", "sip:bob@10.0.0.5:5060").replace(b";branch=", b";rport;branch="), bob_nat)
    auth = answer(challenge, "bob")
    ok, _ = await one(farm, register("bob", "sip:bob@10.0.0.5:5060", cseq=2, auth=auth).replace(b";branch=", b";rport;branch="),
                      bob_nat)
    assert ok.status == 200
    alice_nat = ("UDP", "198.51.100.9", 40123)       # her NAT's port; her Contact a private address
    private = b"Contact: <sip:alice@192.168.1.20:5060>"

    def call(data: bytes) -> bytes:
        return data.replace(b"Contact: <sip:alice@198.51.100.9:5060>", private).replace(b";branch=", b";rport;branch=")
    challenge, _ = await one(farm, call(invite()), alice_nat)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, out = await forwarded_invite(farm, call(invite(cseq=2, auth=auth, branch="z9hG4bKnat")), alice_nat)
    assert out.destination == bob_nat
    route = forwarded.headers.get("Record-Route")
    assert ";fc=" in route and ";fe=" in route

    def in_dialog(method: str, target: str, sender: str, cseq: int) -> bytes:
        tags = ("<sip:alice@acme.example>;tag=a1", "<sip:bob@acme.example>;tag=b1")
        frm, to = tags if sender == "alice" else tags[::-1]
        return (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;rport;branch=z9hG4bK{method}{cseq}\r\n"
                f"Route: {route}\r\nFrom: {frm}\r\nTo: {to}\r\nCall-ID: call-1\r\nCSeq: {cseq} {method}\r\n"
                f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    # The caller's ACK reaches the callee's NAT, not its private Contact.
    [ack] = await farm.handle(in_dialog("ACK", "sip:bob@10.0.0.5:5060", "alice", 2), alice_nat)
    assert ack.destination == bob_nat
    # The callee's re-INVITE and BYE reach the caller's NAT -- also from a port its NAT chose anew.
    reinvite, out = await forwarded_invite(farm, in_dialog("INVITE", "sip:alice@192.168.1.20:5060", "bob", 7), bob_nat)
    assert reinvite.method == "INVITE" and out.destination == alice_nat
    bye, out = await one(farm, in_dialog("BYE", "sip:alice@192.168.1.20:5060", "bob", 8), ("UDP", "192.0.2.7", 6000))
    assert bye.method == "BYE" and out.destination == alice_nat and out.member is None


async def test_a_phone_whose_contact_reaches_it_gets_no_flow_in_the_record_route(farm):
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    caller = ("UDP", "198.51.100.9", 5060)
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKdirect"), caller)
    route = forwarded.headers.get("Record-Route")
    assert ";fc=" not in route and ";fe=" not in route


async def test_a_response_is_passed_on_only_to_the_next_hop_of_a_request_we_forwarded(farm):
    """§16.11: a response whose top Via is not one we put on a request is discarded.  A forged
    "response" with a farm-looking Via must not make a member send the forger's bytes to an
    address of the forger's choosing: over UDP a reflector, over TCP a connection dialled to
    any host:port (say an MTA on the inner network) carrying the forger's text."""
    caller = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    ours, theirs = forwarded.headers.get_all("Via")
    callee = ("UDP", "192.0.2.7", 5062)
    body = b"EHLO x\r\nMAIL FROM:<a@evil.example>\r\n"

    def response(*vias: str) -> bytes:
        return (b"SIP/2.0 200 OK\r\n" + b"".join(f"Via: {v}\r\n".encode() for v in vias)
                + f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: call-1\r\n"
                  f"CSeq: 2 INVITE\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

    made_up = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-cf0123456789abcdef012345-0;m=sipfarm-1"
    for vias in [(made_up, "SIP/2.0/TCP 10.0.0.25:25;branch=z9hG4bKx"),           # any branch of ours' shape
                 (made_up, "SIP/2.0/UDP 203.0.113.5:53;branch=z9hG4bKx"),
                 (ours, theirs + ";received=203.0.113.5"),                     # a real one, sent elsewhere
                 (ours, theirs.replace("SIP/2.0/UDP", "SIP/2.0/TCP")),
                 (ours + ";fl=" + "TCP|10.0.0.25|25|sipfarm-1".encode().hex(), theirs),
                 ("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-cf\u00e9-0", theirs)]:
        assert await farm.handle(response(*vias), callee) == [], vias
    assert farm.metrics.dropped.labels(reason="forged response")._value.get() == 6
    # The callee's own answer still goes to the caller.
    answered, out = await one(farm, response(ours, theirs), callee)
    assert answered.status == 200 and out.destination == caller


async def test_a_caller_that_came_over_udp_is_answered_over_udp_whatever_its_via_says(farm):
    """A Via naming TCP on a request that came over UDP must not have a member dial TCP to
    the Via's maddr for the callee's answer: a subscriber could otherwise have the farm open a
    connection to any host:port of the inner network carrying text its other phone wrote."""
    caller = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    lying = lambda **kw: invite(**kw).replace(b"SIP/2.0/UDP 198.51.100.9:5060;",
                                              b"SIP/2.0/TCP 198.51.100.9:25;maddr=10.0.0.25;")
    challenge, out = await one(farm, lying(), caller)
    assert out.destination == caller
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, lying(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    _, out = await one(farm, reply(forwarded, 180, "b1"), ("UDP", "192.0.2.7", 5062))
    assert out.destination == ("UDP", "198.51.100.9", 25)      # the caller's host, never its maddr


async def test_the_same_request_gets_the_same_branch_on_every_member(farm):
    """A retransmission or CANCEL reaching another member is the same transaction downstream."""
    await registered(farm, user="bob")
    other = SipFarm(farm.settings, "sipfarm-2", store=farm.store, dialogs=farm.dialogs, auth=farm.auth,
                    counters=Counters(), secret=b"k" * 32, address=("127.0.0.1", 6060), registry=CollectorRegistry(),
                    meter=farm.meter, clock=farm.clock_)
    cancel = (f"CANCEL sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKinv2\r\n"
              f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: call-1\r\n"
              f"CSeq: 2 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    one_, _ = await one(farm, cancel)
    two, _ = await one(other, cancel)
    assert one_.top_via().branch == two.top_via().branch


async def test_unregistered_user_and_options(farm):
    caller = ("UDP", "198.51.100.9", 5060)
    challenge, _ = await one(farm, invite(to="carol"), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:carol@{DOMAIN}", header="Proxy-Authorization")
    missing, _ = await one(farm, invite(to="carol", cseq=2, auth=auth, branch="z9hG4bKx"), caller)
    assert missing.status == 404        # no such user (bob, a user with no binding, gets 480)
    options = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKo\r\n"
               f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n").encode()
    ok, _ = await one(farm, options, caller)
    assert ok.status == 200 and "INVITE" in ok.headers.get("Allow")


def out_of_dialog(method, to="bob", sender="alice", cseq=1, auth="", branch="z9hG4bKood1") -> bytes:
    return (f"{method} sip:{to}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch={branch}\r\n"
            f"From: <sip:{sender}@{DOMAIN}>;tag=s1\r\nTo: <sip:{to}@{DOMAIN}>\r\nCall-ID: ood-{method}\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{auth}Content-Type: text/plain\r\n"
            f"Content-Length: 2\r\n\r\nhi").encode()


@pytest.mark.parametrize("method", ["MESSAGE", "OPTIONS", "NOTIFY", "REFER", "SUBSCRIBE", "INFO"])
async def test_every_request_forwarded_to_a_phone_needs_the_callers_credentials(farm, method):
    """Not only an INVITE: a stranger must not reach a registered phone through the farm under
    a subscriber's name, nor learn who is registered (407 for a registered callee and for
    nobody alike, never the phone's answer against our 480)."""
    stranger = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    registered_callee, _ = await one(farm, out_of_dialog(method), stranger)
    nobody, _ = await one(farm, out_of_dialog(method, to="nobody", branch="z9hG4bKood2"), stranger)
    assert registered_callee.status == nobody.status == 407
    assert registered_callee.headers.get("Proxy-Authenticate").startswith("Digest ")
    # With alice's credentials it reaches bob's phone, the credentials stripped.
    auth = answer(registered_callee, "alice", method=method, uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    out = await farm.handle(out_of_dialog(method, cseq=2, auth=auth, branch="z9hG4bKood3"), stranger)
    [forwarded] = [parse_message(o.data) for o in out if o.destination == ("UDP", "192.0.2.7", 5062)]
    assert forwarded.method == method and str(forwarded.uri) == "sip:bob@192.0.2.7:5062"
    assert "Proxy-Authorization" not in forwarded.headers and forwarded.body == b"hi"
    # A wrong password is answered as a stranger is.
    wrong = answer(registered_callee, "alice", password="not-it", method=method, uri=f"sip:bob@{DOMAIN}",
                   header="Proxy-Authorization")
    refused, _ = await one(farm, out_of_dialog(method, cseq=3, auth=wrong, branch="z9hG4bKood4"), stranger)
    assert refused.status == 407


async def authenticated_out_of_dialog(farm, method, caller):
    """bob registered over UDP; alice's ``method`` to him with her credentials (its bytes)."""
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, out_of_dialog(method), caller)
    auth = answer(challenge, "alice", method=method, uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    return out_of_dialog(method, cseq=2, auth=auth, branch="z9hG4bKood3")


@pytest.mark.parametrize("method", ["MESSAGE", "OPTIONS", "SUBSCRIBE"])
async def test_a_udp_callers_copy_of_an_initial_request_is_absorbed_not_challenged(farm, method):
    """RFC 3261 §17.2.3: a UDP caller sends its MESSAGE again every T1 until an answer comes.
    A copy is its transaction's, not a new request: checked again, its credentials were a
    replayed nonce count, so the caller was told 407 while the first was still on its way,
    sent it once more with fresh credentials -- and bob read the message twice."""
    caller, bob = ("UDP", "198.51.100.9", 5060), ("UDP", "192.0.2.7", 5062)
    request = await authenticated_out_of_dialog(farm, method, caller)
    first = await farm.handle(request, caller)
    assert [o.destination for o in first] == [bob]
    assert await farm.handle(request, caller) == []                  # no answer yet: absorbed
    forwarded = parse_message(first[0].data)
    passed = await farm.handle(reply(forwarded, 200, "b1"), bob)
    assert [(o.destination, parse_message(o.data).status) for o in passed] == [(caller, 200)]
    again = await farm.handle(request, caller)                       # §17.2.2: the final again
    assert [(o.destination, parse_message(o.data).status) for o in again] == [(caller, 200)]


async def test_a_copy_of_an_initial_request_handed_over_by_another_member_goes_again_until_its_answer(farm):
    """The member the phone sent it to handed it over, and the answer reaches that member (our
    Via names its address): our Via's ``o`` has it sent on to this one (forker_of), whose
    server transaction then answers the copies -- before, they went downstream again, and a
    callee on TCP (its transaction ended at once, §17.2.2) showed the message twice."""
    caller, bob = ("UDP", "198.51.100.9", 5060), ("UDP", "192.0.2.7", 5062)
    request = await authenticated_out_of_dialog(farm, "MESSAGE", caller)
    first = await farm.handle(request, caller, flow_member="sipfarm-2", flow_address=("192.0.2.200", 5060))
    [sent] = [parse_message(o.data) for o in first]
    assert sent.top_via().host == "192.0.2.200"                         # answers go to member 2 ...
    assert SipFarm.forker_of(parse_message(reply(sent, 200, "b1"))) == names.node_key("sipfarm-1")   # ... and on here
    # Before the answer, a copy goes to bob again through member 2 (the frame that carried
    # the first may have been lost inside the farm): bob's transaction absorbs it, or repeats
    # an answer that was lost; member 2 starts no second client transaction for it.
    copy = await farm.handle(request, caller, flow_member="sipfarm-2", flow_address=("192.0.2.200", 5060))
    assert [(o.destination, o.member, o.data) for o in copy] == [(o.destination, o.member, o.data) for o in first]
    passed = await farm.handle(reply(sent, 200, "b1"), bob, flow_member="sipfarm-2", flow_address=("192.0.2.200", 5060))
    assert [(o.destination, parse_message(o.data).status) for o in passed] == [(caller, 200)]
    again = await farm.handle(request, caller, flow_member="sipfarm-2", flow_address=("192.0.2.200", 5060))
    assert [(o.destination, parse_message(o.data).status) for o in again] == [(caller, 200)]


async def test_an_initial_request_from_a_connection_keeps_no_transaction(farm):
    """A caller on TCP never sends a copy (§17.1.1.2): nothing is kept for it."""
    caller = ("TCP", "198.51.100.9", 40000)
    request = await authenticated_out_of_dialog(farm, "MESSAGE", caller)
    await farm.handle(request.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), caller)
    assert len(farm.server_transactions) == 0


@pytest.mark.parametrize("method, routed", [("SUBSCRIBE", True), ("REFER", True), ("MESSAGE", False),
                                             ("OPTIONS", False), ("INFO", False)])
async def test_requests_that_create_a_dialog_are_record_routed(farm, method, routed):
    """RFC 3261 §16.6 step 4, RFC 6665 §4.3, RFC 3515 §2.4.4: the farm stays on the path of a
    subscription as of a call, so the phone's NOTIFYs and the subscriber's refresh come back
    through it (and reach a phone behind NAT); a MESSAGE or OPTIONS creates no dialog."""
    caller = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, out_of_dialog(method), caller)
    auth = answer(challenge, "alice", method=method, uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, out = await one(farm, out_of_dialog(method, cseq=2, auth=auth, branch="z9hG4bKood5"), caller)
    assert out.destination == ("UDP", "192.0.2.7", 5062)
    route = forwarded.headers.get("Record-Route")
    if not routed:
        assert route is None
        return
    assert route.startswith("<sip:127.0.0.1:5060;lr;cf=sipfarm-1;dm=")
    # The phone's NOTIFY comes back on that Route (From and To of the subscription swapped)
    # and is loose-routed to the subscriber.
    notify = (f"NOTIFY sip:alice@198.51.100.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKn1\r\n"
              f"Route: {route}\r\nFrom: <sip:bob@{DOMAIN}>;tag=b1\r\nTo: <sip:alice@{DOMAIN}>;tag=s1\r\n"
              f"Call-ID: ood-{method}\r\nCSeq: 1 NOTIFY\r\nEvent: dialog\r\nSubscription-State: active\r\n"
              f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    notified, out = await one(farm, notify, ("UDP", "192.0.2.7", 5062))
    assert notified.method == "NOTIFY" and out.destination == caller and "Route" not in notified.headers


async def test_a_cancel_is_not_challenged(farm):
    """RFC 3261 §22.1: a CANCEL cannot be sent again with credentials."""
    out = await farm.handle(out_of_dialog("CANCEL", to="nobody").replace(b"Content-Length: 2\r\n\r\nhi",
                                                                         b"Content-Length: 0\r\n\r\n"),
                            ("UDP", "198.51.100.9", 5060))
    assert [parse_message(o.data).status for o in out] == [481]


async def test_bad_requests_get_400_class_answers_and_garbage_silence(farm):
    bad = register().replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE")
    response, _ = await one(farm, bad)
    assert response.status == 400
    assert await farm.handle(b"\x00\x01garbage\r\n\r\n", PHONE) == []
    huge = register(extra="X-Big: " + "a" * 20000 + "\r\n")
    assert await farm.handle(huge, PHONE) == []   # larger than sip_max_message_size, unreadable


def reply(request, status: int, tag: str) -> bytes:
    reason = {200: "OK", 180: "Ringing", 486: "Busy Here", 480: "Temporarily Unavailable", 487: "Request Terminated",
              603: "Decline"}[status]
    return (f"SIP/2.0 {status} {reason}\r\n".encode()
            + b"".join(f"Via: {v}\r\n".encode() for v in request.headers.get_all("Via"))
            + f"From: {request.headers.get('From')}\r\nTo: {request.headers.get('To')};tag={tag}\r\n"
              f"Call-ID: {request.call_id}\r\nCSeq: {request.headers.get('CSeq')}\r\nContent-Length: 0\r\n\r\n".encode())


async def forked_invite(farm):
    caller = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.9", call_id="desk")
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.8:5062>;q=0.5", call_id="mobile")
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    trying, *out = await farm.handle(invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert parse_message(trying.data).status == 100
    return [(parse_message(o.data), o.destination) for o in out]


async def test_an_invite_forks_to_every_device_and_the_best_failure_wins(farm):
    branches = await forked_invite(farm)
    assert [d for _, d in branches] == [("UDP", "192.0.2.7", 5062), ("UDP", "192.0.2.8", 5062)]
    assert [r.top_via().branch[-2:] for r, _ in branches] == ["-0", "-1"]
    desk, mobile = branches[0][0], branches[1][0]
    busy = [(parse_message(o.data), o.destination) for o in await farm.handle(reply(desk, 486, "d"), ("UDP", "192.0.2.7", 5062))]
    # The farm ACKs the failure itself and holds it while the other device may still answer.
    assert [(m.method, d) for m, d in busy] == [("ACK", ("UDP", "192.0.2.7", 5062))]
    gone = [(parse_message(o.data), o.destination) for o in await farm.handle(reply(mobile, 480, "m"), ("UDP", "192.0.2.8", 5062))]
    assert [getattr(m, "method", None) or m.status for m, _ in gone] == ["ACK", 486]
    assert gone[1][1] == ("UDP", "198.51.100.9", 5060)


async def test_a_decline_on_one_device_cancels_the_others_and_reaches_the_caller(farm):
    """§16.7 step 5: a 6xx is held, the branches still ringing are cancelled (not left to ring
    until Timer C), and the 6xx is what the caller hears once they have answered (step 6)."""
    (desk, _), (mobile, _) = await forked_invite(farm)
    out = [(parse_message(o.data), o.destination) for o in await farm.handle(reply(desk, 603, "d"), ("UDP", "192.0.2.7", 5062))]
    assert [(m.method, d) for m, d in out] == [("ACK", ("UDP", "192.0.2.7", 5062)), ("CANCEL", ("UDP", "192.0.2.8", 5062))]
    cancel = out[1][0]
    assert cancel.top_via().branch == mobile.top_via().branch and "tag=" not in cancel.headers.get("To")
    # A second 6xx (or its retransmission) cancels nothing again.
    again = [parse_message(o.data) for o in await farm.handle(reply(desk, 603, "d"), ("UDP", "192.0.2.7", 5062))]
    assert [m.method for m in again] == ["ACK"]
    done = [(parse_message(o.data), o.destination) for o in await farm.handle(reply(mobile, 487, "m"), ("UDP", "192.0.2.8", 5062))]
    assert [getattr(m, "method", None) or m.status for m, _ in done] == ["ACK", 603]
    assert done[1][1] == ("UDP", "198.51.100.9", 5060)


async def test_timer_c_answers_408_when_no_branch_ever_answers_and_cancels_the_branches(farm):
    """§16.8: when Timer C fires, the caller hears 408 and each branch still ringing is
    cancelled -- before, the phones rang on and the sending member's UDP client transaction
    for each waited for a final answer for ever.  A branch's 487 is ACKed and goes no further."""
    (desk, _), (mobile, _) = await forked_invite(farm)
    assert farm.expire_forks() == []
    farm.clock_.now += 150
    assert farm.expire_forks() == []      # still ringing
    farm.clock_.now += 60
    out = [(parse_message(o.data), o.destination) for o in farm.expire_forks()]
    assert [(getattr(m, "method", None) or m.status, d) for m, d in out] == [
        ("CANCEL", ("UDP", "192.0.2.7", 5062)), ("CANCEL", ("UDP", "192.0.2.8", 5062)), (408, ("UDP", "198.51.100.9", 5060))]
    assert [m.top_via().branch for m, _ in out[:2]] == [desk.top_via().branch, mobile.top_via().branch]
    assert farm.expire_forks() == []      # once
    done = [(parse_message(o.data), o.destination) for o in await farm.handle(reply(desk, 487, "d"), ("UDP", "192.0.2.7", 5062))]
    assert [(m.method, d) for m, d in done] == [("ACK", ("UDP", "192.0.2.7", 5062))]
    assert done[0][0].top_via().branch == desk.top_via().branch


async def test_timer_c_passes_on_a_failure_that_came_and_nothing_after_an_answer(farm):
    (desk, _), (mobile, _) = await forked_invite(farm)
    await farm.handle(reply(desk, 486, "d"), ("UDP", "192.0.2.7", 5062))
    farm.clock_.now += 210
    out = [parse_message(o.data) for o in farm.expire_forks()]
    # The mobile still rang: cancelled; the caller hears the desk's 486.
    assert [getattr(m, "method", None) or m.status for m in out] == ["CANCEL", 486]
    assert out[0].top_via().branch == mobile.top_via().branch
    (desk, _), (mobile, _) = await forked_invite(farm)
    await farm.handle(reply(mobile, 200, "m"), ("UDP", "192.0.2.8", 5062))
    farm.clock_.now += 210
    assert farm.expire_forks() == []


async def test_an_answer_cancels_the_other_branches(farm):
    (desk, _), (mobile, _) = await forked_invite(farm)
    out = [(parse_message(o.data), o.destination) for o in await farm.handle(reply(mobile, 200, "m"), ("UDP", "192.0.2.8", 5062))]
    cancel, ok = out
    assert cancel[0].method == "CANCEL" and cancel[1] == ("UDP", "192.0.2.7", 5062)
    assert cancel[0].top_via().branch == desk.top_via().branch and str(cancel[0].uri) == str(desk.uri)
    assert ok[0].status == 200 and ok[1] == ("UDP", "198.51.100.9", 5060)
    # The cancelled branch's ringing is not passed on.
    assert await farm.handle(reply(desk, 180, "d"), ("UDP", "192.0.2.7", 5062)) == []


async def test_the_answer_to_the_farms_own_cancel_ends_there_and_is_not_stray(farm):
    (desk, _), (mobile, _) = await forked_invite(farm)
    out = [parse_message(o.data) for o in await farm.handle(reply(mobile, 200, "m"), ("UDP", "192.0.2.8", 5062))]
    cancel = next(m for m in out if getattr(m, "method", None) == "CANCEL")
    stray = farm.metrics.dropped.labels(reason="stray response")
    before = stray._value.get()
    assert await farm.handle(reply(cancel, 200, "d"), ("UDP", "192.0.2.7", 5062)) == []
    assert stray._value.get() == before
    # A response with our Via alone to anything else is stray still (nothing of ours sends one).
    assert await farm.handle(reply(cancel, 200, "d").replace(b" CANCEL\r\n", b" INVITE\r\n"),
                             ("UDP", "192.0.2.7", 5062)) == []
    assert stray._value.get() == before + 1


async def test_a_callers_cancel_reaches_every_branch(farm):
    (desk, _), (mobile, _) = await forked_invite(farm)
    cancel = (f"CANCEL sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKinv2\r\n"
              f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: call-1\r\n"
              f"CSeq: 2 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    out = [parse_message(o.data) for o in await farm.handle(cancel, ("UDP", "198.51.100.9", 5060))]
    assert [m.top_via().branch for m in out] == [desk.top_via().branch, mobile.top_via().branch]


_SAMPLES = [register(), invite(), register(auth='Authorization: Digest username="alice", realm="acme.example", '
                                            'nonce="x", uri="sip:acme.example", response="0", qop=auth, nc=1\r\n')]


def _fresh_farm() -> SipFarm:
    clock = Clock()

    def publish(event):
        pass

    return SipFarm(Settings(), "sipfarm-1", store=Store(clock), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                   secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=publish, clock=clock)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SAMPLES), st.integers(0, 400), st.binary(max_size=40), st.integers(0, 40))
def test_mangled_packets_get_an_answer_or_nothing_never_an_exception(sample, at, insert, cut):
    """Any packet: a list of things to send (possibly empty), never a traceback."""
    data = sample[:at] + insert + sample[at + cut:]
    farm = _fresh_farm()
    out = asyncio.run(farm.handle(data, PHONE))
    for item in out:
        try:
            parse_message(item.data)    # what we send is itself valid SIP ...
        except SipParseError:
            # ... but for the CSeq a 400 copies as it came when its number is out of range
            # (RFC 4475 §3.1.2.4: answered all the same, matched by branch and method).
            cseq = item.data.partition(b"\r\nCSeq: ")[2].partition(b"\r\n")[0].split()
            assert item.data.startswith(b"SIP/2.0 400 ") and len(cseq) == 2 and cseq[0].isdigit(), item.data
            assert not 0 <= int(cseq[0]) < 2 ** 31, item.data


async def test_odd_contacts_get_400_not_a_crash(farm):
    for contact in ("<sip:alice@192.0.2.7>;q=nan", "<sip:alice@192.0.2.7>;q=2", f"<sip:{'a' * 1100}@192.0.2.7>"):
        assert (await registered(farm, contact=contact)).status == 400


async def test_a_very_long_call_id_registers(farm):
    assert (await registered(farm, call_id="c" * 1000)).status == 200


async def test_a_browser_phone_is_reached_over_its_flow_for_the_call_and_in_dialog(farm):
    """RFC 7118: a WebSocket phone's Contact names an .invalid host; the INVITE, the ACK of the
    2xx and a BYE all go to its flow (held by member 2 here), named in the Record-Route."""
    ws_phone = ("WSS", "203.0.113.5", 40123)
    contact = "sip:k3mx8w@df7jal23ls0d.invalid;transport=ws"

    def ws_register(cseq: int, auth: str = "") -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws{cseq}\r\n"
                f"From: <sip:bob@{DOMAIN}>;tag=w1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: ws-reg\r\n"
                f"CSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: 300\r\n{auth}Content-Length: 0\r\n\r\n").encode()
    challenge = parse_message((await farm.handle(ws_register(1), ws_phone, flow_member="sipfarm-2"))[0].data)
    [ok] = await farm.handle(ws_register(2, answer(challenge, "bob")), ws_phone, flow_member="sipfarm-2")
    assert ok.destination == ws_phone and ok.member is None
    assert "received=203.0.113.5" in parse_message(ok.data).headers.get("Via")

    caller = ("UDP", "198.51.100.9", 5060)
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, out = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert out.destination == ws_phone and out.member == "sipfarm-2"        # relayed to the flow's member
    assert forwarded.top_via().transport == "WSS"
    route = forwarded.headers.get("Record-Route")
    assert ";fe=" in route and ";fc=" not in route                          # the caller is on UDP
    ack = (f"ACK {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKack\r\nRoute: {route}\r\n"
           f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: call-1\r\n"
           f"CSeq: 2 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    sent, out = await one(farm, ack, caller)
    assert sent.method == "ACK" and out.destination == ws_phone and out.member == "sipfarm-2"
    # The phone hangs up over its flow: the BYE goes to the caller's Contact, not back to it.
    bye = (f"BYE sip:alice@198.51.100.9:5060 SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKbye\r\n"
           f"Route: {route}\r\nFrom: <sip:bob@{DOMAIN}>;tag=b1\r\nTo: <sip:alice@{DOMAIN}>;tag=a1\r\nCall-ID: call-1\r\n"
           f"CSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    _, out = await one(farm, bye, ws_phone)
    assert out.destination == ("UDP", "198.51.100.9", 5060) and out.member is None


async def test_a_response_goes_back_on_the_connection_the_request_came_on(farm):
    """A TCP caller's Via names its listening port, not its connection's: our Via's fl= does."""
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    caller = ("TCP", "198.51.100.9", 51234)
    tcp_invite = lambda **kw: invite(**kw).replace(b"SIP/2.0/UDP 198.51.100.9:5060", b"SIP/2.0/TCP 198.51.100.9:5060")
    challenge, out = await one(farm, tcp_invite(), caller)
    assert out.destination == caller
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, tcp_invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert ";fc=" in forwarded.headers.get("Record-Route")
    _, out = await one(farm, reply(forwarded, 180, "b1"), ("UDP", "192.0.2.7", 5062))
    assert out.destination == caller


async def test_a_response_goes_back_on_the_connection_whatever_transport_the_callers_via_names(farm):
    """As the farm's own answers (response_destination): a TCP caller whose Via says UDP still
    gets the callee's answers on its connection, not as datagrams to its Via's port."""
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    caller = ("TCP", "198.51.100.9", 51234)
    challenge, out = await one(farm, invite(), caller)          # its Via: SIP/2.0/UDP 198.51.100.9:5060
    assert out.destination == caller
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    _, out = await one(farm, reply(forwarded, 180, "b1"), ("UDP", "192.0.2.7", 5062))
    assert out.destination == caller


async def test_a_retransmitted_invite_gets_100_trying_again_and_is_not_forwarded_twice(farm):
    """The farm retransmits downstream itself (retransmission.py): the caller's copies are absorbed."""
    caller = ("UDP", "198.51.100.9", 5060)
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    first = invite(cseq=2, auth=auth, branch="z9hG4bKinv2")
    forwarded, _ = await forwarded_invite(farm, first, caller)
    again, out = await one(farm, first, caller)
    assert again.status == 100 and out.destination == caller


async def test_a_late_new_request_gets_503_with_retry_after_and_its_copies_the_same(farm):
    data = register(branch="z9hG4bKlate1")
    [refused] = farm.refuse_overloaded(farm.parse(data), PHONE)
    response = parse_message(refused.data)
    assert response.status == 503 and response.headers.get("Retry-After")
    assert refused.destination == PHONE
    # A copy of it gets the same answer, with no new decision and no bus work.
    assert farm.refuse_overloaded(farm.parse(data), PHONE)[0].data == refused.data
    assert (await farm.handle(data, PHONE))[0].data == refused.data
    assert farm.store.writes == 0 and farm.auth.asked == 0


async def test_a_late_copy_of_an_answered_request_gets_its_answer_not_503(farm):
    data = register(branch="z9hG4bKlate2")
    [challenge] = await farm.handle(data, PHONE)
    assert parse_message(challenge.data).status == 401
    assert farm.refuse_overloaded(farm.parse(data), PHONE)[0].data == challenge.data
    assert farm.refuse_overloaded(farm.parse(b"SIP/2.0 200 OK\r\n\r\n"), PHONE) == []


async def test_a_late_copy_of_a_forwarded_initial_request_is_its_transactions_not_503(farm):
    """A MESSAGE forwarded to bob has a server transaction here: a copy that comes while the
    member is behind is absorbed (no answer yet), then gets bob's answer -- never a 503, which
    the caller took for the final answer (and kept for every later copy) while bob read it."""
    caller, bob = ("UDP", "198.51.100.9", 5060), ("UDP", "192.0.2.7", 5062)
    request = await authenticated_out_of_dialog(farm, "MESSAGE", caller)
    [sent] = await farm.handle(request, caller)
    assert farm.refuse_overloaded(farm.parse(request), caller) == []     # on its way: absorbed
    forwarded = parse_message(sent.data)
    ok = (f"SIP/2.0 200 OK\r\n" + "".join(f"Via: {v}\r\n" for v in forwarded.headers.get_all("Via"))
          + f"From: {forwarded.headers.get('From')}\r\nTo: {forwarded.headers.get('To')};tag=b1\r\n"
          f"Call-ID: {forwarded.call_id}\r\nCSeq: {forwarded.headers.get('CSeq')}\r\nContent-Length: 0\r\n\r\n")
    await farm.handle(ok.encode(), bob)
    again = farm.refuse_overloaded(farm.parse(request), caller)
    assert [(o.destination, parse_message(o.data).status) for o in again] == [(caller, 200)]
    assert farm.metrics.overloaded._value.get() == 0


def test_the_answer_key_is_kept_only_while_the_request_and_its_top_via_are_the_same(farm):
    request = parse_message(register())
    key = farm._answer_key(request)
    assert farm._answer_key(request) is key
    request.headers.replace_first("Via", "SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKother")
    assert farm._answer_key(request)[:3] == ("z9hG4bKother", "192.0.2.9", 5070)
    other = parse_message(register(branch="z9hG4bKthird"))
    assert farm._answer_key(other)[0] == "z9hG4bKthird"


def test_the_date_of_a_200_is_the_clock_s_second_printed_once_per_second(farm):
    import time as _time
    for when in (1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0, 1_600_000_000.5):
        assert farm._date_of(when) == _time.strftime("%a, %d %b %Y %H:%M:%S GMT", _time.gmtime(when))


async def test_an_auth_service_away_gets_503_its_copies_the_same_and_a_new_register_asks_again(farm):
    from colony.contracts.auth import AuthUnavailable

    challenge, _ = await one(farm, register("alice"))
    real = farm.auth.sip_credentials
    asked = []

    async def away(*args):
        asked.append(args)
        raise AuthUnavailable("no answer on colony.auth.sip within 5s")
    farm.auth.sip_credentials = away
    packet = register("alice", cseq=2, branch="z9hG4bKaway", auth=answer(challenge, "alice"))
    first, _ = await one(farm, packet)
    assert first.status == 503 and first.headers.get("Retry-After") == "5"
    copy, _ = await one(farm, packet)                  # a retransmission: the same answer, no new lookup
    assert copy.status == 503 and len(asked) == 1
    farm.auth.sip_credentials = real
    challenge, _ = await one(farm, register("alice", cseq=3))
    ok, _ = await one(farm, register("alice", cseq=4, auth=answer(challenge, "alice")))
    assert ok.status == 200


async def test_answers_kept_for_retransmissions_go_when_they_expire(farm):
    # A steady stream of challenges for hours: the cache holds the last ANSWER_LIFETIME
    # seconds of answers, not ANSWER_CACHE of them forever.
    from colony_sipfarm.farm import ANSWER_LIFETIME

    for n in range(400):
        challenge, _ = await one(farm, register(call_id=f"flow-{n}"))
        assert challenge.status == 401
        farm.clock_.now += 1.0
    assert len(farm._answers) <= ANSWER_LIFETIME + 1
    # Within its lifetime a retransmission still gets the same answer, without a new nonce.
    data = register(call_id="again", branch="z9hG4bKagain")
    first, _ = await one(farm, data)
    farm.clock_.now += ANSWER_LIFETIME - 1
    copy, _ = await one(farm, data)
    assert copy.headers.get("WWW-Authenticate") == first.headers.get("WWW-Authenticate")
