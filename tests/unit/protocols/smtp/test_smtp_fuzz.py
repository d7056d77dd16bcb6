"""Hypothesis against the SMTP core: whatever arrives, in whatever pieces, the core answers
with protocol replies, never raises, and holds no more than a line of input."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings, strategies as st

from colony.protocols.smtp import events as E
from smtp_driver import Driver

_REPLY_LINE = re.compile(rb"^[2-5][0-9]{2}[ -][^\r\n]*$")

FRAGMENTS = [b"EHLO c.test\r\n", b"HELO c.test\r\n", b"MAIL FROM:<a@b.test>\r\n", b"MAIL FROM:<>  SIZE=99999999999\r\n",
             b"RCPT TO:<x@y.test> NOTIFY=SUCCESS\r\n", b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n",
             b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"..\r\n",
             b"x" * 600, b"\r", b"\n", b"\xff\xfe", b"VRFY a\r\n", b"AUTH PLAIN\r\n", b"RCPT TO:<\xc3\xa9@y.test>\r\n"]

streams = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=200)), max_size=40)


def _drive(chunks: list[bytes], tls: bool, split_at: list[int]) -> Driver:
    d = Driver(tls_available=tls, max_errors=50, max_message_size=5000)
    data = b"".join(chunks)
    cuts = sorted({min(c, len(data)) for c in split_at})
    start = 0
    for cut in cuts + [len(data)]:
        d.feed(data[start:cut])
        start = cut
        assert len(d.conn._buf) <= 1600, "the core buffers at most one line (or a BDAT piece)"
        if d.of(E.StartTls) and not d.conn.tls_active and not d.conn.closed:
            d.conn.tls_started(2.0)
            d.pump()
    d.feed(b"")
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.booleans(), st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
def test_any_input_gets_protocol_replies_only(chunks, tls, split_at):
    d = _drive(chunks, tls, split_at)
    lines = bytes(d.out).split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert _REPLY_LINE.match(line), line
    assert d.conn.closed  # EOF always ends the session
    assert len(d.messages) == len(d.of(E.DataComplete))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0, max_value=3000), max_size=10))
def test_message_text_never_ends_early_or_twice(body, split_at):
    """Any body, sent after DATA with a proper end: at most one message, and if accepted it is
    exactly the unstuffed body."""
    d = Driver(max_errors=50)
    d.session()
    d.feed(b"DATA\r\n")
    stuffed = b"\r\n".join((b"." + line if line.startswith(b".") else line) for line in body.split(b"\r\n"))
    payload = stuffed + (b"" if stuffed.endswith(b"\r\n") or not stuffed else b"\r\n") + b".\r\n"
    start = 0
    for cut in sorted({min(c, len(payload)) for c in split_at}) + [len(payload)]:
        d.feed(payload[start:cut])
        start = cut
    assert len(d.messages) <= 1
    if d.messages:
        expected = body + (b"" if body.endswith(b"\r\n") or not body else b"\r\n")
        assert d.messages[0] == expected


class _RandomPolicy(Driver):
    """Answers each Command with a drawn positive or negative reply."""

    def __init__(self, choices: list[bool], **config) -> None:
        self.choices = choices or [True]
        self.n = 0
        super().__init__(**config)

    def pump(self) -> None:
        from colony.protocols.smtp import NEED_DATA, PAUSED, replies as R
        negative = [R.TEMPORARY_FAILURE, R.QUOTA_PERMANENT, R.TOO_MANY_RECIPIENTS, R.CONNECTION_REFUSED]
        while True:
            event = self.conn.next_event()
            self.out += self.conn.data_to_send()
            if event is NEED_DATA or event is PAUSED:
                return
            self.events.append(event)
            if isinstance(event, E.DataComplete):
                self.messages.append(b"")
            if event.needs_reply:
                ok = self.choices[self.n % len(self.choices)]
                self.n += 1
                self.out += self.conn.send(self.answers[type(event)] if ok else negative[self.n % len(negative)])


@settings(max_examples=300, deadline=None)
@given(streams, st.lists(st.booleans(), max_size=8), st.lists(st.integers(min_value=0, max_value=4000), max_size=10))
def test_any_input_with_any_policy_answers(chunks, choices, split_at):
    d = _RandomPolicy(choices, tls_available=True, max_errors=20, max_message_size=5000)
    data = b"".join(chunks)
    start = 0
    for cut in sorted({min(c, len(data)) for c in split_at}) + [len(data)]:
        d.feed(data[start:cut])
        start = cut
        assert len(d.conn._buf) <= 1600
        if d.of(E.StartTls) and not d.conn.tls_active and not d.conn.closed:
            d.conn.tls_started(2.0)
            d.pump()
    d.feed(b"")
    for line in bytes(d.out).split(b"\r\n")[:-1]:
        assert _REPLY_LINE.match(line), line
    assert d.conn.closed
