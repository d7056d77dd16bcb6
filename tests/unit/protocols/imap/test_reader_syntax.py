"""IMAP command framing and grammar elements: literals of every kind, continuation requests,
bounded memory against huge or unterminated literals, sequence sets that are never expanded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.imap.reader import CommandReader, Continue, LineTooLong, Literal, TooBig
from colony.protocols.imap.syntax import (
    Cursor, ParseError, SequenceSet, decode_mutf7, encode_mutf7, parse_sequence_set,
)


def events(reader: CommandReader) -> list:
    out = []
    while (e := reader.next_event()) is not None:
        out.append(e)
    return out


def test_plain_commands_and_split_reads():
    r = CommandReader()
    for piece in (b"a1 NO", b"OP\r\na2 LOGIN bob ", b'"pw"\r\n'):
        r.receive_data(piece)
    cmds = events(r)
    assert [c.parts for c in cmds] == [(b"a1 NOOP",), (b'a2 LOGIN bob "pw"',)]
    assert cmds[1].tag == "a2"


def test_synchronizing_literal_asks_to_continue():
    r = CommandReader()
    r.receive_data(b"a1 LOGIN {5}\r\n")
    assert events(r) == [Continue()]
    r.receive_data(b"alice {6}\r\n")
    assert events(r) == [Continue()]
    r.receive_data(b"s3cret\r\n")
    (cmd,) = events(r)
    assert cmd.parts == (b"a1 LOGIN {5}", Literal(b"alice"), b" {6}", Literal(b"s3cret"), b"")
    c = Cursor(cmd)
    assert c.atom() == b"a1"
    c.sp()
    assert c.keyword() == "LOGIN"
    c.sp()
    assert c.astring() == b"alice"
    c.sp()
    assert c.astring() == b"s3cret"
    c.end()


def test_non_synchronizing_and_binary_literals():
    r = CommandReader()
    r.receive_data(b"a1 APPEND INBOX {3+}\r\nabc ~{4}\r\n\x00\x01\x02\x03\r\n")
    assert events(r)[0] == Continue()     # the ~{4} is synchronizing
    r2 = CommandReader()
    r2.receive_data(b"a1 APPEND INBOX (\\Seen) {3+}\r\nabc\r\n")
    (cmd,) = events(r2)
    c = Cursor(cmd)
    c.atom(); c.sp(); c.keyword(); c.sp()
    assert c.mailbox() == b"INBOX"
    c.sp()
    assert c.flag_list() == ["\\Seen"]
    c.sp()
    assert c.literal() == Literal(b"abc")
    c.end()


def test_too_big_literals_bounded_memory():
    r = CommandReader(max_literal=1000)
    r.receive_data(b"a1 APPEND INBOX {5000000}\r\n")
    assert events(r) == [TooBig("a1", 1000, True)]          # no continuation: the client must not send it
    r.receive_data(b"a2 NOOP\r\n")
    assert [e.parts for e in events(r)] == [(b"a2 NOOP",)]
    # A non-synchronizing one is coming anyway: skipped as it arrives, never held.
    r.receive_data(b"a3 APPEND INBOX {100000+}\r\n")
    assert events(r) == [TooBig("a3", 1000, False)]
    for _ in range(100):
        r.receive_data(b"x" * 1000)
        assert r.buffered < 2000
    r.receive_data(b" trailing\r\na4 NOOP\r\n")
    assert [e.parts for e in events(r)] == [(b"a4 NOOP",)]


def test_unterminated_line_is_refused_and_skipped():
    r = CommandReader(max_line=1024)
    r.receive_data(b"a1 SEARCH " + b"A" * 5000)
    assert events(r) == [LineTooLong("a1")]
    for _ in range(50):
        r.receive_data(b"B" * 10_000)
        assert r.buffered <= 1024
    r.receive_data(b"\r\na2 NOOP\r\n")
    assert [e.parts for e in events(r)] == [(b"a2 NOOP",)]


def test_literals_refused_when_not_allowed():
    r = CommandReader()
    r.continue_allowed(False)
    r.receive_data(b"a1 LOGIN {5}\r\n")
    assert events(r) == [TooBig("a1", r.max_literal, True)]


def test_quoted_strings_and_atoms():
    c = Cursor(b'"a \\"b\\" \\\\ c" atom] (x)')
    assert c.quoted() == b'a "b" \\ c'
    c.sp()
    assert c.astring() == b"atom]"
    for bad in (b'"unterminated', b'"bad \\q escape"', b'"cr\r"'):
        with pytest.raises(ParseError):
            Cursor(bad).quoted()
    assert Cursor(b"~tilde").astring() == b"~tilde"
    assert Cursor(b"inbox").mailbox() == b"INBOX"
    assert Cursor(b"Work/%").list_mailbox() == b"Work/%"
    assert Cursor(b"NIL").nstring() is None


def test_sequence_sets_are_ranges_never_expanded():
    s = parse_sequence_set(b"1:4294967295,7,*,10:5")
    assert s.resolved(highest=3_000_000_000) == [(1, 4294967295)]
    assert s.contains(2_000_000_000, highest=10)
    assert parse_sequence_set(b"4:2,9").resolved(100) == [(2, 4), (9, 9)]
    assert parse_sequence_set(b"*:5").resolved(3) == [(3, 5)]
    assert parse_sequence_set(b"$") == SequenceSet(saved=True)
    assert str(parse_sequence_set(b"1:*,5")) == "1:*,5"
    for bad in (b"0", b"1:0", b"01", b"4294967296", b"1,,2", b":", b"a"):
        with pytest.raises(ParseError):
            parse_sequence_set(bad)


def test_dates_and_flags():
    c = Cursor(b'"17-Jul-1996 02:44:25 -0700" 1-Feb-1994 (\\Seen \\answered $Forwarded)')
    dt = c.date_time()
    assert dt.utcoffset() == -timedelta(hours=7) and dt.day == 17 and dt.hour == 2
    c.sp()
    assert c.date().month == 2
    c.sp()
    assert c.flag_list() == ["\\Seen", "\\Answered", "$Forwarded"]
    with pytest.raises(ParseError):
        Cursor(b'"31-Feb-2024 00:00:00 +0000"').date_time()


def test_modified_utf7_round_trip():
    for name in ["INBOX", "Entwürfe", "日本語/メール", "A&B", "~peter/mail/台北/日本語", "Sent Items"]:
        assert decode_mutf7(encode_mutf7(name)) == name
    assert encode_mutf7("~peter/mail/台北/日本語") == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert encode_mutf7("A&B") == b"A&-B"
    for bad in (b"&Jjo", b"&!!-", b"caf\xc3\xa9"):
        with pytest.raises(ParseError):
            decode_mutf7(bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.sampled_from([b"{5}\r\n", b"{3+}\r\n", b"~{2}\r\n", b"\r\n", b"a1 NOOP\r\n",
                                           b"{99999999999}\r\n", b"{0}\r\n"])), max_size=30))
def test_reader_never_raises_and_stays_bounded(chunks):
    r = CommandReader(max_line=2048, max_literal=4096, max_command=8192)
    for chunk in chunks:
        r.receive_data(chunk)
        events(r)
        assert r.buffered <= 2048 + 8192 + 4096


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60) | st.none()), min_size=1, max_size=30),
       st.integers(0, 70))
def test_a_sequence_set_is_resolved_once_per_mailbox_size(ranges, highest):
    # SEARCH asks contains() once per message: resolving a line's worth of ranges (thousands)
    # each time made one SEARCH cost ~10 s of the store's event loop on 5,000 messages.
    seq = parse_sequence_set(b",".join(b"%d:%s" % (a, b"*" if b is None else b"%d" % b) for a, b in ranges))
    expected = {n for a, b in seq.resolved(highest) for n in range(a, b + 1)}
    calls = []
    resolve = SequenceSet.resolved

    def counted(self, top):
        calls.append(top)
        return resolve(self, top)

    SequenceSet.resolved = counted
    try:
        assert {n for n in range(0, 80) if seq.contains(n, highest)} == expected
        assert {n for n in range(0, 80) if seq.contains(n, highest + 1)} == \
            {n for a, b in resolve(seq, highest + 1) for n in range(a, b + 1)}
    finally:
        SequenceSet.resolved = resolve
    assert calls == [highest, highest + 1]


def test_literal_in_place_of_the_tag_or_command_gets_no_continuation():
    """``{3}`` as a tag or ``a {3}`` as a command name is no command (both are atoms, RFC 9051
    §9): the line goes to the rules as it is (a BAD), no ``+`` is asked for, and the next
    command is not eaten as the literal's octets; a non-synchronizing one is skipped whole."""
    r = CommandReader()
    r.receive_data(b"{3}\r\nb NOOP\r\n")
    assert [e.parts for e in events(r)] == [(b"{3}",), (b"b NOOP",)]
    r.receive_data(b"a {5}\r\nc NOOP\r\n")
    assert [e.parts for e in events(r)] == [(b"a {5}",), (b"c NOOP",)]
    r.receive_data(b"{3+}\r\nxyz rest\r\nd NOOP\r\n")
    assert [e.parts for e in events(r)] == [(b"{3+}",), (b"d NOOP",)]
    r.receive_data(b"e SELECT {5}\r\n")
    assert events(r) == [Continue()]


def test_no_literal_minus_syntax():
    """RFC 7888 writes every non-synchronizing literal ``{n+}`` (LITERAL- only limits its size to
    4096): ``{5-}`` announces nothing, and the octets after it are the next line."""
    r = CommandReader()
    r.receive_data(b"a SELECT {5-}\r\nINBOX\r\n")
    assert [e.parts for e in events(r)] == [(b"a SELECT {5-}",), (b"INBOX",)]
    r.receive_data(b"b SELECT {5000+}\r\n")
    assert events(r) == []          # LITERAL+ (advertised): any size, no continuation
