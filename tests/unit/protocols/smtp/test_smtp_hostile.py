"""Hostile input found by probing a running edge: each case once broke the core (a traceback
that dropped the connection, or a limit that did not hold) and must end in a protocol reply."""

from __future__ import annotations

import pytest

from colony.protocols.smtp import events as E
from smtp_driver import Driver, codes


@pytest.mark.parametrize("number", ["²", "٣", "１", "1²"])
def test_a_size_of_non_ascii_digits_is_a_syntax_error(number):
    # str.isdigit() holds for these; int() raises on "²" (a traceback, the session gone)
    # and reads "٣" as 3.
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    out = d.feed(f"MAIL FROM:<a@b.test> SIZE={number}\r\n".encode())
    assert codes(out) == ["501 5.5.4"] and not d.of(E.MailFrom) and not d.conn.closed


@pytest.mark.parametrize("number", ["²", "٣", "１", "1²"])
def test_a_bdat_size_of_non_ascii_digits_is_a_syntax_error(number):
    d = Driver()
    d.session()
    out = d.feed(f"BDAT {number} LAST\r\n".encode())
    assert codes(out) == ["501 5.5.4"] and d.conn.closed and not d.messages
