"""The registrar, RFC 3261 §10.3 step by step, and its digest checks (RFC 7616, RFC 8760,
RFC 2617 §3.2.2.5), as a table of REGISTER sequences and what each must be answered.

Every case runs against a farm member with in-memory stores (``test_farm``); the same table
is replayed against Kamailio (``tests/integration/sipfarm/test_registrar_vs_kamailio.py``),
where each difference must be one judged there against the RFC text.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from colony.protocols.sip.digest import h, ha1, parse_credentials
from colony.protocols.sip.message import SipResponse
from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.uri import parse_address
from colony.settings import Settings

from test_farm import DOMAIN, PASSWORD, answer, forwarded_invite, invite, one, plain_farm, registered

A, B, C = (f"sip:alice@192.0.2.{n}:5062" for n in (7, 8, 9))
INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'


@dataclass(frozen=True)
class Step:
    """One REGISTER (and, when it is challenged and ``auth`` names a user, its retry with that
    user's credentials and the next CSeq) and what the registrar must answer."""

    contact: str | None = f"<{A}>"          # the Contact header value; None: none (a query)
    expires: str | None = "600"             # the Expires header value; None: none
    status: int = 200
    # The 200's Contacts: URI -> (expires, q); None: not checked.
    bound: dict[str, tuple[int, float]] | None = None
    cseq: int = 1
    call_id: str = "reg-1"
    to: str = "alice"
    auth: str | None = "alice"              # whose credentials answer the 401; None: the 401 is the answer
    digest: dict[str, str | None] = field(default_factory=dict)  # what the credentials get wrong (credentials())
    extra: tuple[str, ...] = ()             # further header lines
    reuse: bool = False                     # answer the previous step's challenge again, with its nonce count


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]


def _c(name: str, *steps: Step) -> Case:
    return Case(name, steps)


CASES = [
    # Step 7: the Expires header, a contact's expires parameter (which wins), neither (the
    # registrar's choice); the 200 names the interval granted (step 8).
    _c("Expires header", Step(bound={A: (600, 1.0)})),
    _c("a contact's expires parameter wins over Expires", Step(contact=f"<{A}>;expires=700", bound={A: (700, 1.0)})),
    _c("neither: the registrar's default", Step(expires=None, bound={A: (3600, 1.0)})),
    _c("huge: the 200 names the interval granted", Step(expires="4294967296", bound={A: (3600, 1.0)})),
    _c("too brief: 423 with Min-Expires", Step(expires="10", status=423)),
    # RFC 4475 §3.1.2.4: expiry values in error may be treated as the defaults.
    _c("an Expires that is no number: as if absent", Step(expires="abc", bound={A: (3600, 1.0)})),
    _c("a negative Expires: as if absent", Step(expires="-5", bound={A: (3600, 1.0)})),
    _c("an expires parameter that is no number: the Expires header's",
       Step(contact=f"<{A}>;expires=abc", bound={A: (600, 1.0)})),
    _c("expires=0 removes that contact only",
       Step(contact=f"<{A}>, <{B}>", bound={A: (600, 1.0), B: (600, 1.0)}),
       Step(contact=f"<{A}>;expires=0", cseq=3, bound={B: (600, 1.0)})),
    # Step 6: the wildcard.
    _c("Contact * with a non-zero Expires: 400", Step(contact="*", status=400)),
    _c("Contact * without Expires: 400", Step(contact="*", expires=None, status=400)),
    _c("Contact * beside another contact: 400", Step(contact=f"*, <{A}>", expires="0", status=400)),
    _c("Contact * with Expires 0 removes every binding",
       Step(call_id="a", bound={A: (600, 1.0)}),
       Step(contact=f"<{B}>", expires="900", call_id="b", bound={A: (600, 1.0), B: (900, 1.0)}),
       Step(contact="*", expires="0", call_id="c", bound={})),
    # Steps 6 and 7: Call-ID and CSeq.
    _c("a lower CSeq of the same Call-ID fails and changes nothing",
       Step(cseq=10, bound={A: (600, 1.0)}),
       Step(expires="900", cseq=3, status=500),
       Step(contact=None, expires=None, cseq=20, bound={A: (600, 1.0)})),
    _c("Contact * with a lower CSeq of a binding's Call-ID fails",
       Step(cseq=10, bound={A: (600, 1.0)}),
       Step(contact="*", expires="0", cseq=3, status=500),
       Step(contact=None, expires=None, cseq=20, bound={A: (600, 1.0)})),
    _c("the same CSeq again is the same request: its 200, nothing changed",
       Step(cseq=10, bound={A: (600, 1.0)}),
       Step(expires="900", cseq=10, bound={A: (600, 1.0)})),
    _c("a lower CSeq of another Call-ID updates",
       Step(cseq=10, bound={A: (600, 1.0)}),
       Step(expires="900", cseq=3, call_id="other", bound={A: (900, 1.0)})),
    # Step 7 finds a contact's binding by URI comparison (§19.1.4), not by its text.
    _c("a contact written in another parameter order and case refreshes its binding",
       Step(contact=f"<{A};transport=udp;ob>", bound={f"{A};transport=udp;ob": (600, 1.0)}),
       Step(contact=f"<{A};ob;transport=UDP>", expires="900", cseq=3, bound={f"{A};transport=udp;ob": (900, 1.0)})),
    _c("a contact written differently with expires=0 removes its binding",
       Step(contact=f"<{A};transport=udp;ob>", bound={f"{A};transport=udp;ob": (600, 1.0)}),
       Step(contact=f"<{A};OB;TRANSPORT=udp>", expires="0", cseq=3, bound={})),
    _c("a contact with an explicit port is another binding",
       Step(contact="<sip:alice@192.0.2.7>", bound={"sip:alice@192.0.2.7": (600, 1.0)}),
       Step(contact="<sip:alice@192.0.2.7:5060>", cseq=3,
            bound={"sip:alice@192.0.2.7": (600, 1.0), "sip:alice@192.0.2.7:5060": (600, 1.0)})),
    # q-values (§20.10: 0 to 1, three decimals at most).
    _c("q-values kept per contact",
       Step(contact=f"<{A}>;q=0.2, <{B}>;q=0.9, <{C}>", bound={A: (600, 0.2), B: (600, 0.9), C: (600, 1.0)})),
    _c("q above 1: 400", Step(contact=f"<{A}>;q=1.5", status=400)),
    _c("q not a number: 400", Step(contact=f"<{A}>;q=abc", status=400)),
    # Step 8: every current binding of the AOR, its URI as registered.
    _c("the 200 lists every binding of the AOR",
       Step(call_id="a", bound={A: (600, 1.0)}),
       Step(contact=f"<{B}>", expires="900", call_id="b", bound={A: (600, 1.0), B: (900, 1.0)})),
    _c("a query (no Contact) lists the bindings and changes nothing",
       Step(bound={A: (600, 1.0)}),
       Step(contact=None, expires=None, cseq=3, bound={A: (600, 1.0)})),
    _c("contact URI parameters kept",
       Step(contact=f"<{A};transport=udp;ob>;{INSTANCE}", bound={f"{A};transport=udp;ob": (600, 1.0)})),
    # §8.2.2.3: the registrar is a UAS, and supports no extension.
    _c("Require of an unknown extension: 420", Step(extra=("Require: foo",), status=420)),
    # RFC 3327: the registrar does not store Path; an edge proxy that needs it asks with
    # Require: path (§5.2) and is told 420, otherwise the Path is ignored like any header.
    _c("Path with Require: path: 420", Step(extra=("Path: <sip:edge.example;lr>", "Supported: path", "Require: path"),
                                           status=420)),
    _c("Path without Require: registered, no Path in the 200",
       Step(extra=("Path: <sip:edge.example;lr>", "Supported: path"), bound={A: (600, 1.0)})),
    # Steps 3 and 4: who may change whose bindings.
    _c("a third party with the AOR's own credentials", Step(to="bob", auth="bob", bound={A: (600, 1.0)})),
    _c("another user's good credentials: 403", Step(to="bob", auth="alice", status=403)),
    _c("credentials of nobody: challenged again", Step(auth="mallory", status=401)),
    # Digest (RFC 7616, RFC 8760, RFC 2617).
    _c("wrong password: challenged again", Step(digest={"password": "wrong"}, status=401)),
    _c("credentials for another realm: challenged", Step(digest={"realm": "other.example"}, status=401)),
    _c("qop=auth-int, not offered: challenged", Step(digest={"qop": "auth-int"}, status=401)),
    _c("no qop (RFC 2069 compatibility)", Step(digest={"qop": None}, bound={A: (600, 1.0)})),
    _c("SHA-256", Step(digest={"algorithm": "SHA-256"}, bound={A: (600, 1.0)})),
    _c("MD5-sess", Step(digest={"algorithm": "MD5-sess"}, bound={A: (600, 1.0)})),
    _c("a digest uri naming a user, not the Request-URI: 400", Step(digest={"uri": f"sip:bob@{DOMAIN}"}, status=400)),
    _c("a REGISTER's digest uri naming its address of record", Step(digest={"uri": f"sip:alice@{DOMAIN}"},
                                                                    bound={A: (600, 1.0)})),
    _c("a digest uri naming the server's address (as sipp writes it)", Step(digest={"uri": "sip:192.0.2.1:5060"},
                                                                          bound={A: (600, 1.0)})),
    _c("a digest uri written differently is the same URI", Step(digest={"uri": f"SIP:{DOMAIN.upper()}:5060"},
                                                               bound={A: (600, 1.0)})),
    _c("a nonce count used again: stale",
       Step(bound={A: (600, 1.0)}),
       Step(cseq=3, reuse=True, status=401)),
]


def credentials(challenge: SipResponse, user: str, method: str, request_uri: str, nc: int = 1,
                **wrong: str | None) -> str:
    """An Authorization line answering ``challenge`` (its first WWW-Authenticate) as ``user``,
    with what ``wrong`` names changed: ``password``, ``realm``, ``qop`` (None: none, the RFC
    2069 form), ``algorithm``, ``uri`` (the digest uri, else the Request-URI)."""
    params = parse_credentials(challenge.headers.get("WWW-Authenticate"))
    algorithm = wrong.get("algorithm") or params.get("algorithm", "MD5")
    realm = wrong.get("realm") or params["realm"]
    qop = wrong["qop"] if "qop" in wrong else "auth"
    uri = wrong.get("uri") or request_uri
    nonce, cnonce, nc_text = params["nonce"], "0a4f113b", f"{nc:08x}"
    key = ha1(algorithm, user, realm, wrong.get("password") or PASSWORD)
    if algorithm.upper().endswith("-SESS"):
        key = h(algorithm, f"{key}:{nonce}:{cnonce}")
    ha2 = h(algorithm, f"{method}:{uri}")
    if qop:
        response = h(algorithm, f"{key}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}")
        extra = f', qop={qop}, nc={nc_text}, cnonce="{cnonce}"'
    else:
        response, extra = h(algorithm, f"{key}:{nonce}:{ha2}"), ""
    return (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}{extra}')


def register(step: Step, cseq: int, via: str, auth: str | None = None, transport: str = "UDP") -> bytes:
    lines = [f"Via: SIP/2.0/{transport} {via};rport;branch=z9hG4bK{os.urandom(6).hex()}", "Max-Forwards: 70",
             f"From: <sip:alice@{DOMAIN}>;tag=r{step.cseq}", f"To: <sip:{step.to}@{DOMAIN}>",
             f"Call-ID: {step.call_id}", f"CSeq: {cseq} REGISTER"]
    lines += [f"Contact: {step.contact}"] if step.contact is not None else []
    lines += [f"Expires: {step.expires}"] if step.expires is not None else []
    lines += [*step.extra, *([auth] if auth else []), "Content-Length: 0"]
    return f"REGISTER sip:{DOMAIN} SIP/2.0\r\n{''.join(line + chr(13) + chr(10) for line in lines)}\r\n".encode()


Send = Callable[[bytes], Awaitable[SipResponse | None]]


async def play(case: Case, send: Send, via: str, transport: str = "UDP") -> list[SipResponse | None]:
    """Each step's final answer, sent with ``send`` (Via ``transport`` and sent-by ``via``)."""
    answers: list[SipResponse | None] = []
    challenge: SipResponse | None = None
    for step in case.steps:
        if step.reuse and challenge is not None:
            # The previous step's credentials again, nonce count and all, in a new request.
            answers.append(await send(register(step, step.cseq, via, credentials(
                challenge, step.auth or step.to, "REGISTER", f"sip:{DOMAIN}", **step.digest), transport)))
            continue
        first = await send(register(step, step.cseq, via, transport=transport))
        if first is None or first.status != 401 or step.auth is None:
            answers.append(first)
            continue
        challenge = first
        auth = credentials(first, step.auth, "REGISTER", f"sip:{DOMAIN}", **step.digest)
        answers.append(await send(register(step, step.cseq + 1, via, auth, transport)))
    return answers


def bound(response: SipResponse) -> dict[str, tuple[int, float]]:
    """The Contacts of a REGISTER's 200: URI -> (expires, q)."""
    found = {}
    for value in response.headers.get_all("Contact"):
        address = parse_address(value)
        found[str(address.uri)] = (int(address.params.get("expires") or -1), float(address.params.get("q") or 1.0))
    return found


def farm_sender(farm, source=("UDP", "192.0.2.7", 5062)) -> Send:
    async def send(data: bytes) -> SipResponse | None:
        out = await farm.handle(data, source)
        return parse_message(out[-1].data) if out else None
    return send


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_register(case: Case, transport: str):
    """Over UDP and over a TCP connection alike (the same core, another flow)."""
    farm = plain_farm()
    answers = await play(case, farm_sender(farm, (transport, "192.0.2.7", 5062)), "192.0.2.7:5062", transport)
    for index, (step, got) in enumerate(zip(case.steps, answers)):
        assert got is not None, f"step {index}: no answer"
        assert got.status == step.status, f"step {index}: {got.status} {got.reason}"
        if step.bound is not None:
            assert bound(got) == step.bound, f"step {index}"
        if got.status == 423:
            assert got.headers.get("Min-Expires") == "60"
        if got.status == 420:
            assert got.headers.get("Unsupported") == ("path" if "path" in " ".join(step.extra) else "foo")
        if got.status == 200:
            assert "Path" not in got.headers
        if step.reuse:
            assert "stale=true" in got.headers.get("WWW-Authenticate")


@pytest.mark.parametrize("minimum, asked, status, granted", [
    (7200, "1800", 423, None),      # under an hour and under the minimum
    (7200, "3600", 200, 3600),      # an hour is never too brief (§10.3 step 7: "if and only if")
    (7200, "5000", 200, 5000),
    (60, "59", 423, None),
    (60, "60", 200, 60),
])
async def test_interval_too_brief_only_under_an_hour(minimum, asked, status, granted):
    farm = plain_farm(Settings(sip_min_expires=minimum, sip_max_expires=7200))
    [got] = await play(Case("", (Step(expires=asked, status=status),)), farm_sender(farm), "192.0.2.7:5062")
    assert got.status == status
    if status == 423:
        assert got.headers.get("Min-Expires") == str(minimum)
    else:
        assert bound(got) == {A: (granted, 1.0)}


async def test_a_nonce_older_than_its_lifetime_is_stale_with_the_right_password_only():
    farm = plain_farm()
    send = farm_sender(farm)
    step = Step()
    challenge = await send(register(step, 1, "192.0.2.7:5062"))
    farm.clock_.now += farm.settings.sip_nonce_ttl + 1
    stale = await send(register(step, 2, "192.0.2.7:5062", credentials(challenge, "alice", "REGISTER", f"sip:{DOMAIN}")))
    assert stale.status == 401 and "stale=true" in stale.headers.get("WWW-Authenticate")
    wrong = await send(register(step, 3, "192.0.2.7:5062", credentials(challenge, "alice", "REGISTER", f"sip:{DOMAIN}",
                                                                       password="wrong")))
    assert wrong.status == 401 and "stale" not in wrong.headers.get("WWW-Authenticate")


async def test_a_late_register_of_the_same_call_id_writes_nothing():
    farm = plain_farm()
    await play(Case("", (Step(cseq=10),)), farm_sender(farm), "192.0.2.7:5062")
    [stored] = farm.store.sets["alice@acme.example"]
    writes = farm.store.writes
    [late] = await play(Case("", (Step(contact=f"<{A}>;expires=0", cseq=3, status=500),)), farm_sender(farm),
                        "192.0.2.7:5062")
    assert late.status == 500
    assert farm.store.writes == writes and farm.store.sets["alice@acme.example"] == [stored]


async def test_an_invite_with_another_users_good_credentials_is_forbidden():
    """The caller is who the From says, proved by that user's credentials (§22.3); a
    subscriber's good credentials under another subscriber's From get 403, not a challenge
    the phone would answer with the same credentials again."""
    farm = plain_farm()
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    caller = ("UDP", "198.51.100.9", 5060)
    challenge, _ = await one(farm, invite(), caller)     # From alice
    as_bob = answer(challenge, "bob", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    refused, _ = await one(farm, invite(cseq=2, auth=as_bob, branch="z9hG4bKbob"), caller)
    assert refused.status == 403
    as_alice = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization", nc=2)
    forwarded, _ = await forwarded_invite(farm, invite(cseq=3, auth=as_alice, branch="z9hG4bKalice"), caller)
    assert forwarded.method == "INVITE"


async def test_an_invite_whose_digest_uri_is_another_request_uri_gets_400():
    """Credentials computed for an INVITE to carol do not carry one to bob (RFC 2617
    §3.2.2.5): whoever took them off the wire cannot aim the call elsewhere."""
    farm = plain_farm()
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    caller = ("UDP", "198.51.100.9", 5060)
    challenge, _ = await one(farm, invite(), caller)
    for_carol = answer(challenge, "alice", method="INVITE", uri=f"sip:carol@{DOMAIN}", header="Proxy-Authorization")
    refused, _ = await one(farm, invite(cseq=2, auth=for_carol, branch="z9hG4bKcarol"), caller)
    assert refused.status == 400


# --- the proxy (RFC 3261 §16) -------------------------------------------------------------

CALLER = ("UDP", "198.51.100.9", 5060)


@dataclass(frozen=True)
class ProxyCase:
    """A request from alice (CALLER), answered with her credentials when challenged; bob is
    registered at 192.0.2.7:5062, alice is a user with no binding, nobody is no user."""

    name: str
    method: str = "INVITE"
    target: str = f"sip:bob@{DOMAIN}"     # the Request-URI
    lines: tuple[str, ...] = ("Max-Forwards: 70",)
    status: int | None = None             # the caller's final answer; None: forwarded to bob
    header: tuple[str, str] | None = None  # a header the answer (or the forwarded request) must carry
    to_tag: bool = False


PROXY_CASES = [
    ProxyCase("Max-Forwards 0: 483, before any challenge", lines=("Max-Forwards: 0",), status=483),
    ProxyCase("Max-Forwards decremented", lines=("Max-Forwards: 5",), header=("Max-Forwards", "4")),
    ProxyCase("no Max-Forwards: one of 70 added", lines=(), header=("Max-Forwards", "70")),
    ProxyCase("Proxy-Require of an unknown extension: 420 with Unsupported",
              lines=("Max-Forwards: 70", "Proxy-Require: foo"), status=420, header=("Unsupported", "foo")),
    ProxyCase("a Route naming the farm is removed", lines=("Max-Forwards: 70", "Route: <sip:127.0.0.1:5060;lr>"),
              header=("Route", None)),
    ProxyCase("a Route naming someone else: not a relay", lines=("Max-Forwards: 70", "Route: <sip:198.51.100.77;lr>"),
              status=403),
    ProxyCase("a user with no binding: 480", target=f"sip:alice@{DOMAIN}", status=480),
    ProxyCase("no such user: 404", target=f"sip:nobody@{DOMAIN}", status=404),
    ProxyCase("OPTIONS to the farm itself: 200 with Allow", method="OPTIONS", target=f"sip:{DOMAIN}", status=200,
              header=("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, REFER, NOTIFY, "
                               "SUBSCRIBE, PRACK")),
    ProxyCase("OPTIONS to the farm itself with Max-Forwards 0: answered as a UAS", method="OPTIONS",
              target=f"sip:{DOMAIN}", lines=("Max-Forwards: 0",), status=200),
    ProxyCase("OPTIONS to a user goes to the user's device", method="OPTIONS"),
    ProxyCase("CANCEL for no transaction, a user with no binding: 481", method="CANCEL", target=f"sip:alice@{DOMAIN}",
              status=481),
    ProxyCase("in-dialog without our Route: 481", method="BYE", to_tag=True, status=481),
]


def proxy_request(case: ProxyCase, cseq: int, auth: str = "", via: str = "198.51.100.9:5060") -> bytes:
    to_tag = ";tag=t1" if case.to_tag else ""
    lines = [f"Via: SIP/2.0/UDP {via};rport;branch=z9hG4bK{os.urandom(6).hex()}",
             f"From: <sip:alice@{DOMAIN}>;tag=a1", f"To: <{case.target}>{to_tag}", "Call-ID: proxy-1",
             f"CSeq: {cseq} {case.method}", "Contact: <sip:alice@198.51.100.9:5060>", *case.lines,
             *([auth] if auth else []), "Content-Length: 0"]
    return f"{case.method} {case.target} SIP/2.0\r\n{''.join(line + chr(13) + chr(10) for line in lines)}\r\n".encode()


@pytest.mark.parametrize("case", PROXY_CASES, ids=[c.name for c in PROXY_CASES])
async def test_proxy(case: ProxyCase):
    farm = plain_farm()
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    out = await farm.handle(proxy_request(case, 1), CALLER)
    first = parse_message(out[-1].data)
    if first.status == 407:
        assert case.status not in (420, 483), "§16.3 steps 3 and 5 come before the proxy's authentication"
        auth = answer(first, "alice", method=case.method, uri=case.target, header="Proxy-Authorization")
        out = await farm.handle(proxy_request(case, 2, auth), CALLER)
    messages = [(parse_message(o.data), o.destination) for o in out]
    finals = [m for m, _ in messages if not hasattr(m, "method") and m.status >= 200]
    forwarded = [(m, d) for m, d in messages if hasattr(m, "method")]
    if case.status is None:
        assert not finals and [d for _, d in forwarded] == [("UDP", "192.0.2.7", 5062)], messages
        got = forwarded[0][0]
    else:
        assert not forwarded and [m.status for m in finals] == [case.status], messages
        got = finals[0]
    if case.header is not None:
        name, value = case.header
        assert (", ".join(got.headers.get_all(name)) or None) == value


# --- which binding a Contact names (§10.3 step 7: URI comparison, §19.1.4) ------------------

@pytest.mark.parametrize("a, b, same", [
    # RFC 3261 §19.1.4's own examples.
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp", True),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", True),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5", True),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com", True),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x", True),
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP", False),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060", False),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp", False),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp", False),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting", False),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4", False),
    # A phone's Contact written in another parameter order or case.
    ("sip:alice@192.0.2.7:5062;transport=udp;ob", "sip:alice@192.0.2.7:5062;ob;transport=UDP", True),
    ("sip:alice@192.0.2.7:5062", "sip:alice@192.0.2.7:5062;maddr=192.0.2.9", False),
    ("sip:alice@192.0.2.7", "sips:alice@192.0.2.7", False),
])
def test_uri_equivalence(a, b, same):
    from colony.protocols.sip.uri import parse_uri, uri_equivalent

    assert uri_equivalent(parse_uri(a), parse_uri(b)) is same
    assert uri_equivalent(parse_uri(b), parse_uri(a)) is same
