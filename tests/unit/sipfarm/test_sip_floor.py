"""bench/sip_floor.py's responders: the canned answers sipp's REGISTER scenario accepts, and
each responder mode answering over real loopback UDP (no sipp), so the script cannot rot."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from colony.protocols.sip.message import SipResponse
from colony.protocols.sip.parser import parse_message

BENCH = Path(__file__).resolve().parents[3] / "bench" / "sip_floor.py"
_spec = importlib.util.spec_from_file_location("sip_floor", BENCH)
sip_floor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sip_floor)

HEAD = (b"REGISTER sip:bench.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bK-1\r\n"
        b"From: <sip:u1@bench.test>;tag=77SIPpTag001\r\n"
        b"To: <sip:u1@bench.test>\r\n"
        b"Call-ID: 1-77@127.0.0.1\r\n"
        b"CSeq: %d REGISTER\r\n"
        b"Contact: <sip:u1@127.0.0.1:5061;transport=UDP>\r\n")
TAIL = b"Max-Forwards: 70\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
FIRST = HEAD % 1 + TAIL
SECOND = HEAD % 2 + b'Authorization: Digest username="u1", realm="bench.test", nonce="x", uri="sip:bench.test", response="y"\r\n' + TAIL


def test_a_register_without_credentials_gets_a_401_challenge_with_its_transaction_headers():
    out = parse_message(sip_floor.answer(FIRST))
    assert isinstance(out, SipResponse) and out.status == 401
    assert out.call_id == "1-77@127.0.0.1" and out.headers.get("CSeq") == "1 REGISTER"
    assert out.top_via().branch == "z9hG4bK-1"
    assert out.headers.get("From") == "<sip:u1@bench.test>;tag=77SIPpTag001"
    challenge = out.headers.get("WWW-Authenticate")
    assert challenge.startswith("Digest ") and 'realm="bench.test"' in challenge and "nonce=" in challenge
    assert out.headers.get("Contact") is None        # only the transaction's headers are copied


def test_a_register_with_credentials_gets_200():
    out = parse_message(sip_floor.answer(SECOND))
    assert isinstance(out, SipResponse) and out.status == 200
    assert out.headers.get("CSeq") == "2 REGISTER" and out.call_id == "1-77@127.0.0.1"


def test_compact_header_names_are_copied_and_other_methods_unanswered():
    compact = FIRST.replace(b"Via:", b"v:").replace(b"Call-ID:", b"i:")
    out = parse_message(sip_floor.answer(compact))
    assert out.status == 401 and out.call_id == "1-77@127.0.0.1"
    assert sip_floor.answer(b"OPTIONS sip:bench.test SIP/2.0\r\n\r\n") is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", sip_floor.MODES)
def test_each_responder_answers_over_udp(mode):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH), "--serve", mode, "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.settimeout(5)
            for request, status in ((FIRST, 401), (SECOND, 200)):
                phone.sendto(request, ("127.0.0.1", port))
                assert parse_message(phone.recv(65535)).status == status
    finally:
        proc.terminate()
        assert proc.wait(10) is not None
