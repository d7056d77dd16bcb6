"""The registrar and proxy tables of ``test_registrar_semantics`` replayed against Kamailio
(Debian's ``kamailio``, configured by ``bench/peers.py`` as an authenticating registrar and
proxy on loopback UDP), the same requests the farm member is sent, and the answers compared:
status and the 200's bindings (URI, expires, q); for a proxied request, its final answer or
that it reached the callee's device (and the header the case names).  Every case where they
differ must be one judged in ``KAMAILIO_DIFFERS`` / ``KAMAILIO_PROXY_DIFFERS`` with the RFC
text that decides it (or the bench script's choice that makes it), so a new difference fails
the test until somebody judged it -- and so does a judged one that went away."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
import sys
from pathlib import Path

import pytest

from colony.protocols.sip.message import SipResponse
from colony.protocols.sip.parser import parse_message

from tools import free_ports, need_tool

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "sipfarm"))

from peers import Kamailio  # noqa: E402
from test_farm import PASSWORD, answer, plain_farm, registered  # noqa: E402
from test_registrar_semantics import (CALLER, CASES, PROXY_CASES, Case, ProxyCase, Step, bound,  # noqa: E402
                                      farm_sender, play, proxy_request)

# Case name -> why Colony and Kamailio answer it differently, and who is right.
KAMAILIO_DIFFERS = {
    "huge: the 200 names the interval granted":
        "Kamailio answers 200 listing no binding (it read 2**32 as 0: nothing was registered); RFC 4475 "
        "§3.1.2.4 lets an element treat an expiry value in error as the default, and §10.3 step 7 lets the "
        "registrar shorten it: Colony grants sip_max_expires and names it in the 200",
    "an Expires that is no number: as if absent":
        "Kamailio's sanity_check answers 400; RFC 4475 §3.1.2.4: an element 'could treat them as if they "
        "contained the default values for expiration' -- Colony does, and the 200 names what it granted",
    "a negative Expires: as if absent":
        "as for an Expires that is no number (Kamailio 400, Colony the default)",
    "an expires parameter that is no number: the Expires header's":
        "both register; Kamailio takes its default (3600), Colony the request's Expires header (600), "
        "as if the parameter were absent (§10.3 step 7) -- either is allowed by RFC 4475 §3.1.2.4",
    "too brief: 423 with Min-Expires":
        "Kamailio raises a too short interval to its min_expires and answers 200, Colony answers 423 with "
        "Min-Expires: both allowed (§10.3 step 7: the registrar MAY reject with 423)",
    "Contact * beside another contact: 400":
        "Kamailio accepts it; §10.3 step 6: 'If the request has additional Contact fields ... the server MUST "
        "return a 400 (Invalid Request)': Colony is right",
    "a lower CSeq of the same Call-ID fails and changes nothing":
        "both refuse and change nothing; RFC 3261 names no code ('the request fails'): Kamailio 400, "
        "Colony 500 (§21.5.1: the client may retry -- with a higher CSeq, which succeeds)",
    "Contact * with a lower CSeq of a binding's Call-ID fails":
        "Kamailio removes the binding; §10.3 step 6: 'it MUST remove the binding only if the CSeq in the "
        "request is higher ... Otherwise, the update MUST be aborted and the request fails': Colony is right",
    "a contact written in another parameter order and case refreshes its binding":
        "Kamailio matches contacts by their text and keeps two bindings (calls fork twice to one device); "
        "§10.3 step 7: 'using the URI comparison rules defined in Section 19.1.4', where parameter order "
        "and case do not count: Colony",
    "a contact written differently with expires=0 removes its binding":
        "as above: Kamailio removes nothing (no binding has that text); Colony removes the equivalent one",
    "Require of an unknown extension: 420":
        "the bench script never checks Require; a registrar is a UAS and MUST answer 420 (§8.2.2.3): Colony",
    "Path with Require: path: 420":
        "the bench script checks no Require; Colony stores no Path, so it cannot honour one that is "
        "required (RFC 3327 §5.2, RFC 3261 §8.2.2.3): 420 with Unsupported: path",
    "another user's good credentials: 403":
        "the bench script checks the password only (every user has the same one) and not whose credentials "
        "they are (no auth_check/db_check_to); §10.3 step 4: 403 for a user not authorized for the AOR",
    "credentials of nobody: challenged again":
        "the bench script accepts any username with the shared password (no user table)",
    "SHA-256":
        "Kamailio challenged with MD5 and refuses another algorithm; Colony checks credentials in any algorithm "
        "it can (RFC 8760 §2.4: the server picks what it offers; accepting more is no weaker than MD5)",
    "MD5-sess":
        "as SHA-256: Kamailio refuses an algorithm it did not offer, Colony checks it",
    "a digest uri naming a user, not the Request-URI: 400":
        "Kamailio does not compare them; RFC 2617 §3.2.2.5: 'if they are not [the same], the server SHOULD "
        "return a 400 Bad Request': Colony is right",
    "a nonce count used again: stale":
        "the bench script leaves Kamailio's nonce_count off, so a replayed nc is accepted; RFC 7616 §3.4/"
        "RFC 2617 §3.2.2: the count lets the server detect replays -- Colony answers stale=true",
}


# Proxy case name -> why the answers differ.
KAMAILIO_PROXY_DIFFERS = {
    "no Max-Forwards: one of 70 added":
        "the bench script's mf_process_maxfwd_header(\"10\") adds 10; RFC 3261 §16.6 step 3: 'SHOULD be 70'",
    "Proxy-Require of an unknown extension: 420 with Unsupported":
        "Kamailio forwards it: the bench script's sanity_check flags leave out the Proxy-Require check; "
        "§16.3 step 5: the element 'MUST return a 420 (Bad Extension)': Colony",
    "a user with no binding: 480":
        "the bench script answers 404 to any failed location lookup; §21.4.18: 480 when the user is not "
        "logged in, 404 (§21.4.5) only when the user does not exist: Colony",
    "OPTIONS to the farm itself with Max-Forwards 0: answered as a UAS":
        "Kamailio's script checks Max-Forwards first (483); §16.3 step 3: for an OPTIONS with Max-Forwards 0 "
        "the element MAY answer as the final recipient (§11), otherwise 483 -- both allowed",
    "OPTIONS to the farm itself: 200 with Allow":
        "the bench Kamailio has no alias for the domain (its 'myself' is its address), so an OPTIONS for the "
        "domain is looked up as a user: 404 -- a script choice",
    "CANCEL for no transaction, a user with no binding: 481":
        "the bench script drops a CANCEL that matches no transaction (no answer); §16.10 has a proxy forward it "
        "statelessly -- here there is nobody to forward it to, and Colony answers 481 as a UAS would (§9.2)",
    "in-dialog without our Route: 481":
        "the bench script answers 404 'Not here' to an in-dialog request it cannot loose-route; neither is "
        "named by RFC 3261 for a proxy: Colony says the dialog is not one it is on (481)",
}
# Not replayed against Kamailio: a Route to an address of ours it does not know as its own,
# or to a stranger, would have it relay the request there.
NOT_REPLAYED = {"a Route naming the farm is removed", "a Route naming someone else: not a relay"}


class KamailioSender:
    """REGISTERs to Kamailio over loopback UDP; each one's final answer (by Call-ID and CSeq)."""

    def __init__(self, port: int, local_port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", local_port))
        self.sock.settimeout(5)

    async def send(self, data: bytes) -> SipResponse | None:
        return await asyncio.to_thread(self._exchange, data)

    def _exchange(self, data: bytes) -> SipResponse | None:
        sent = parse_message(data)
        self.sock.sendto(data, ("127.0.0.1", self.port))
        try:
            while True:
                got = parse_message(self.sock.recvfrom(65535)[0])
                if (got.status >= 200 and got.call_id == sent.call_id
                        and got.cseq().number == sent.cseq().number):
                    return got
        except socket.timeout:
            return None


def outcome(answers: list[SipResponse | None]) -> list:
    """What is compared: per step the status, and for a 200 its bindings (expires to within
    2 s: Kamailio counts a second as it passes)."""
    out = []
    for got in answers:
        if got is None:
            out.append(None)
        elif got.status == 200:
            out.append((200, {uri: (expires // 3, q) for uri, (expires, q) in bound(got).items()}))
        else:
            out.append(got.status)
    return out


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory):
    need_tool("kamailio")
    port, local_port = free_ports(2)
    peer = Kamailio(tmp_path_factory.mktemp("kamailio"), port, password=PASSWORD, children=1)
    peer.start()
    try:
        yield KamailioSender(port, local_port)
    finally:
        peer.stop()


async def test_the_registrar_table_against_kamailio(kamailio):
    via = f"127.0.0.1:{kamailio.sock.getsockname()[1]}"
    differs = {}
    for case in CASES:
        theirs = await play(case, kamailio.send, via)
        ours = await play(case, farm_sender(plain_farm()), "192.0.2.7:5062")
        assert all(a is not None for a in ours), case.name
        assert theirs[0] is not None, f"{case.name}: Kamailio did not answer"
        if outcome(theirs) != outcome(ours):
            differs[case.name] = (outcome(theirs), outcome(ours))
        # Kamailio's bindings of the case gone before the next one.
        for user in ("alice", "bob"):
            cleanup = Case("", (Step(contact="*", expires="0", to=user, auth=user, cseq=1000,
                                     call_id=f"cleanup-{os.urandom(4).hex()}"),))
            [done] = await play(cleanup, kamailio.send, via)
            assert done is not None and done.status == 200, f"{case.name}: cleanup {user}"
    unjudged = {name: d for name, d in differs.items() if name not in KAMAILIO_DIFFERS}
    gone = set(KAMAILIO_DIFFERS) - set(differs)
    assert not unjudged, "differences nobody judged (Kamailio, Colony):\n" + "\n".join(
        f"  {name}: {d}" for name, d in unjudged.items())
    assert not gone, f"judged differences that are gone: {sorted(gone)}"


class KamailioProxy:
    """A caller socket and a device socket (bob's contact) at Kamailio's proxy."""

    def __init__(self, port: int, caller_port: int, device_port: int) -> None:
        self.port = port
        self.caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.caller.bind(("127.0.0.1", caller_port))
        self.device = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.device.bind(("127.0.0.1", device_port))

    def exchange(self, data: bytes, deadline: float = 5.0):
        """Send ``data`` as the caller: the first final answer the caller gets (a SipResponse)
        or the first request reaching the device (a SipRequest); None if neither comes."""
        sent = parse_message(data)
        self.caller.sendto(data, ("127.0.0.1", self.port))
        end = time.monotonic() + deadline
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.caller, self.device], [], [], left)
            for sock in ready:
                got = parse_message(sock.recvfrom(65535)[0])
                if sock is self.device and getattr(got, "method", None) == sent.method:
                    return got
                if (sock is self.caller and getattr(got, "status", 0) >= 200 and got.call_id == sent.call_id
                        and got.cseq().number == sent.cseq().number):
                    return got
        return None


def proxy_outcome(case: ProxyCase, got) -> tuple:
    """What is compared of a proxied request's fate: its final status, or that it was forwarded;
    and the case's header, if it names one."""
    if got is None:
        return (None,)
    fate = "forwarded" if hasattr(got, "method") else got.status
    if case.header is None:
        return (fate,)
    return fate, ", ".join(got.headers.get_all(case.header[0])) or None


async def farm_proxy_outcome(case: ProxyCase) -> tuple:
    farm = plain_farm()
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")

    async def send(data: bytes):
        out = await farm.handle(data, CALLER)
        messages = [parse_message(o.data) for o in out]
        forwarded = [m for m in messages if hasattr(m, "method")]
        finals = [m for m in messages if not hasattr(m, "method") and m.status >= 200]
        return (forwarded or finals or [None])[0]
    return await exchange_case(case, send, "198.51.100.9:5060")


async def exchange_case(case: ProxyCase, send, via: str) -> tuple:
    got = await send(proxy_request(case, 1, via=via))
    if got is not None and getattr(got, "status", 0) == 407:
        auth = answer(got, "alice", method=case.method, uri=case.target, header="Proxy-Authorization")
        got = await send(proxy_request(case, 2, auth, via=via))
    return proxy_outcome(case, got)


async def test_the_proxy_table_against_kamailio(kamailio):
    need_tool("kamailio")
    caller_port, device_port = free_ports(2)
    proxy = KamailioProxy(kamailio.port, caller_port, device_port)
    # bob's device at Kamailio: the device socket.
    via = f"127.0.0.1:{kamailio.sock.getsockname()[1]}"
    [bob] = await play(Case("", (Step(contact=f"<sip:bob@127.0.0.1:{device_port}>", to="bob", auth="bob",
                                      call_id=f"bob-{os.urandom(4).hex()}"),)), kamailio.send, via)
    assert bob is not None and bob.status == 200
    differs = {}
    for case in PROXY_CASES:
        if case.name in NOT_REPLAYED:
            continue
        ours = await farm_proxy_outcome(case)

        async def send(data: bytes):
            return await asyncio.to_thread(proxy.exchange, data)
        theirs = await exchange_case(case, send, f"127.0.0.1:{caller_port}")
        if theirs != ours:
            differs[case.name] = (theirs, ours)
    unjudged = {name: d for name, d in differs.items() if name not in KAMAILIO_PROXY_DIFFERS}
    gone = set(KAMAILIO_PROXY_DIFFERS) - set(differs)
    assert not unjudged, "differences nobody judged (Kamailio, Colony):\n" + "\n".join(
        f"  {name}: {d}" for name, d in unjudged.items())
    assert not gone, f"judged differences that are gone: {sorted(gone)}"
