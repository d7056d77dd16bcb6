"""The registrar table (``test_registrar_semantics.CASES``) replayed against Kamailio (Debian's
``kamailio``, configured by ``bench/peers.py`` as an authenticating registrar on loopback
UDP), byte for byte the REGISTERs the farm member is sent, and the answers compared: status
and the 200's bindings (URI, expires, q).  Every case where they differ must be one judged in
``KAMAILIO_DIFFERS`` with the RFC text that decides it (or the bench script's choice that
makes it), so a new difference fails the test until somebody judged it -- and so does a
judged one that went away."""

from __future__ import annotations

import asyncio
import os
import socket
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
from test_farm import PASSWORD, plain_farm  # noqa: E402
from test_registrar_semantics import CASES, Case, Step, bound, farm_sender, play  # noqa: E402

# Case name -> why Colony and Kamailio answer it differently, and who is right.
KAMAILIO_DIFFERS = {
    "huge: the 200 names the interval granted":
        "the bench script leaves Kamailio's max_expires at 0 (no maximum), Colony cuts to sip_max_expires "
        "(RFC 3261 §10.3 step 7: the registrar MAY shorten it; the 200 names what it granted)",
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
    "Require of an unknown extension: 420":
        "the bench script never checks Require; a registrar is a UAS and MUST answer 420 (§8.2.2.3): Colony",
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
