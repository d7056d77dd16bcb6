"""SMTP smuggling: no line-end trick ends a message and starts a second one.

Each payload puts a fake end of data, then a whole second transaction, inside the first
message, then the real CRLF.CRLF.  A server that accepted any of those fake ends would
report two messages; this one refuses the session (554 5.5.2) or keeps one message whose
body holds the attempt as text.
"""

from __future__ import annotations

import pytest

from colony.protocols.smtp import events as E
from smtp_driver import Driver, codes

SECOND = b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nFrom: admin@bank.test\r\n\r\nsmuggled\r\n"

FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n\n.\n\n", b"\r\n\x00.\r\n",
             b"\r\n.\x00\r\n", b"\n.\r", b"\r\n .\r\n"]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=[repr(f) for f in FAKE_ENDS])
@pytest.mark.parametrize("split", [False, True])
def test_fake_end_of_data_never_makes_a_second_message(fake_end, split):
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    payload = b"Subject: first\r\n\r\nbody" + fake_end + SECOND + b".\r\n"
    if split:
        for i in range(len(payload)):
            d.feed(payload[i:i + 1])
    else:
        d.feed(payload)
    d.feed(b"QUIT\r\n")
    assert len(d.of(E.MailFrom)) == 1
    assert len(d.messages) <= 1
    if d.messages:  # a harmless variant (NUL, space): one message, the "second" is its text
        assert b"smuggled" in d.messages[0]
    else:
        assert "554 5.5.2" in codes(bytes(d.out)) and d.conn.closed


def test_terminator_plus_commands_without_pipelining_is_refused():
    d = Driver()
    d.feed(b"HELO c.test\r\n")
    d.feed(b"MAIL FROM:<a@b.test>\r\n")
    d.feed(b"RCPT TO:<x@y.test>\r\n")
    d.feed(b"DATA\r\n")
    out = d.feed(b"one\r\n.\r\n" + SECOND + b".\r\n")
    assert codes(out) == ["554 5.5.0"] and not d.messages and d.conn.closed


def test_pipelined_second_transaction_after_ehlo_is_two_honest_messages():
    """With PIPELINING, commands after CRLF.CRLF are legitimate: each message is separate."""
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    d.feed(b"one\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n")
    d.feed(b"two\r\n.\r\n")
    assert d.messages == [b"one\r\n", b"two\r\n"]
