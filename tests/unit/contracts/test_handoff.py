"""The edge -> mail store hand-off line: only the secret's holders can make one, once, in time."""

from __future__ import annotations

import pytest

from colony.contracts.handoff import HandoffError, Verifier, sign

SECRET = b"s" * 32


def test_a_signed_line_verifies_once():
    now = [1_000_000]
    v = Verifier(SECRET, lambda: now[0])
    line = sign(SECRET, "pop3", "alice@acme.example", "192.0.2.7", now[0])
    h = v.verify(line, "pop3")
    assert (h.proto, h.account, h.client_ip) == ("pop3", "alice@acme.example", "192.0.2.7")
    with pytest.raises(HandoffError, match="replayed"):
        v.verify(line, "pop3")


@pytest.mark.parametrize("tamper", [
    lambda l: l.replace(b"alice", b"mallory"),
    lambda l: l.replace(b"pop3", b"imap"),
    lambda l: l[:-5] + b"0000\r\n",
])
def test_tampered_lines_are_refused(tamper):
    v = Verifier(SECRET, lambda: 1_000_000)
    with pytest.raises(HandoffError):
        v.verify(tamper(sign(SECRET, "pop3", "alice@acme.example", "192.0.2.7", 1_000_000)), "pop3")


def test_wrong_secret_wrong_listener_and_stale_lines_are_refused():
    line = sign(b"x" * 32, "pop3", "alice@acme.example", "-", 1_000_000)
    with pytest.raises(HandoffError, match="signature"):
        Verifier(SECRET, lambda: 1_000_000).verify(line, "pop3")
    with pytest.raises(HandoffError, match="listener"):
        Verifier(SECRET, lambda: 1_000_000).verify(sign(SECRET, "imap", "a@b.c", "-", 1_000_000), "pop3")
    with pytest.raises(HandoffError, match="stale"):
        Verifier(SECRET, lambda: 1_000_000 + 31_000).verify(sign(SECRET, "pop3", "a@b.c", "-", 1_000_000), "pop3")


def test_garbage_is_a_handoff_error_and_memory_is_bounded():
    now = [0]
    v = Verifier(SECRET, lambda: now[0], max_remembered=10)
    for junk in (b"", b"\xff\xfe", b"COLONY-HANDOFF 1 2 3", b"x" * 5000):
        with pytest.raises(HandoffError):
            v.verify(junk, "pop3")
    for i in range(50):
        now[0] = i
        v.verify(sign(SECRET, "pop3", "a@b.c", "-", i), "pop3")
    assert len(v._seen) <= 10
    with pytest.raises(HandoffError):
        sign(SECRET, "pop3", "a b@c", "-", 0)
