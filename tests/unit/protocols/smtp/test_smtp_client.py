"""The SMTP client core against scripted server replies: reply parsing whatever the
segmenting, and one transaction with and without PIPELINING (RFC 2920), including the
corner cases a pipelining client meets -- per-recipient RCPT refusals, 421 mid-session,
DATA refused, a 354 with no recipient accepted, 4xx/5xx after the data."""

from __future__ import annotations

import time

import pytest

from colony.protocols.smtp.client import (ProtocolError, RemoteReply, ReplyReader, Transaction, command,
                                          ehlo_extensions, encode_message)

MSG = encode_message(b"Subject: hi\r\n\r\nbody\r\n")


def R(code: int, text: str = "x") -> RemoteReply:
    return RemoteReply(code, text)


def replies(data: bytes, chunk: int | None = None) -> list[RemoteReply]:
    reader, out = ReplyReader(), []
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reader.receive_data(piece)
        while (reply := reader.next_reply()) is not None:
            out.append(reply)
    assert reader.pending == 0
    return out


# --- replies --------------------------------------------------------------------------------

def test_multi_line_reply_is_one_reply_whatever_the_segmenting():
    wire = b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n221 2.0.0 Bye\r\n"
    expected = [R(250, "mx.test Hello\nPIPELINING\nSIZE 1000\n8BITMIME"), R(221, "2.0.0 Bye")]
    for chunk in (None, 1, 2, 7, 19):
        assert replies(wire, chunk) == expected


def test_replies_of_a_pipelined_group_arrive_in_one_segment():
    wire = b"250 2.1.0 OK\r\n550 5.1.1 No such user\r\n250 2.1.5 OK\r\n354 Go ahead\r\n"
    assert [r.code for r in replies(wire)] == [250, 550, 250, 354]
    assert replies(wire)[1].text == "5.1.1 No such user"


def test_bare_code_and_lf_only_line_ends_are_read():
    assert replies(b"250\n354 go\r\n") == [R(250, ""), R(354, "go")]


@pytest.mark.parametrize("wire", [b"hello there\r\n", b"25 short\r\n", b"2500 x\r\n", b"250_x\r\n",
                                  b"250-first\r\n550 second\r\n"])
def test_what_is_not_a_reply_is_a_protocol_error(wire):
    with pytest.raises(ProtocolError):
        replies(wire)


def test_an_endless_reply_is_bounded():
    reader = ReplyReader(max_reply=1000)
    with pytest.raises(ProtocolError):
        for _ in range(100):
            reader.receive_data(b"250-" + b"x" * 40 + b"\r\n")


def test_a_reply_dripped_a_line_per_segment_is_parsed_in_linear_time():
    """A hostile MX sends its EHLO reply one short line per segment: each segment must cost
    only its own octets (parsing the whole incomplete reply again per segment took 78 s of
    the event loop's CPU for one 64 KiB reply)."""
    reader = ReplyReader()
    started = time.process_time()
    with pytest.raises(ProtocolError, match="longer than"):
        for _ in range(20_000):
            reader.receive_data(b"250-x\r\n")
            assert reader.next_reply() is None
    assert time.process_time() - started < 2.0
    reader = ReplyReader()
    for octet in b"250-mx.test\r\n250 PIPELINING\r\n":
        reader.receive_data(bytes([octet]))
    assert reader.next_reply() == R(250, "mx.test\nPIPELINING") and reader.pending == 0


@pytest.mark.parametrize("wire", [b"199 x\r\n", b"600 x\r\n", b"999 5.0.0 x\r\n", b"000\r\n"])
def test_a_reply_code_out_of_range_is_a_protocol_error(wire):
    with pytest.raises(ProtocolError, match="out of range"):
        replies(wire)


def test_reply_text_that_is_not_utf8_is_replaced_not_carried_as_surrogates():
    [reply] = replies(b"550-5.1.1 \xff\xfe bad\r\n550 5.1.1 user\r\n")
    assert reply.text == "5.1.1 \ufffd\ufffd bad\n5.1.1 user"
    reply.text.encode("utf-8")   # what a DSN, a log line and a span do with it


def test_pending_counts_octets_beyond_the_replies_taken():
    reader = ReplyReader()
    reader.receive_data(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n")
    assert reader.next_reply() == R(220, "2.0.0 Ready to start TLS")
    assert reader.pending == len(b"250 injected\r\n")


def test_ehlo_extensions():
    reply = R(250, "mx.test greets you\nPIPELINING\nsize 35882577\nSTARTTLS\nAUTH PLAIN LOGIN")
    assert ehlo_extensions(reply) == {"PIPELINING": "", "SIZE": "35882577", "STARTTLS": "", "AUTH": "PLAIN LOGIN"}
    assert ehlo_extensions(R(250, "mx.test")) == {}


# --- the message --------------------------------------------------------------------------

def test_encode_message_dot_stuffs_and_ends_with_crlf_dot_crlf():
    assert encode_message(b"a\r\n.b\r\n..c\r\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert encode_message(b".first\r\nlast") == b"..first\r\nlast\r\n.\r\n"
    assert encode_message(b"") == b".\r\n"


def test_encode_message_makes_every_line_end_crlf():
    assert encode_message(b"a\nb\rc\r\n.d\n") == b"a\r\nb\r\nc\r\n..d\r\n.\r\n"


def test_command_arguments_cannot_inject_a_command():
    with pytest.raises(ValueError):
        Transaction("a@b.test\r\nRCPT TO:<x@y.test>", ["c@d.test"], MSG).start()
    with pytest.raises(ValueError):
        Transaction("a@b.test", ["c@d.test>\r\nDATA"], MSG, pipelining=True).start()
    with pytest.raises(ValueError):
        command("EHLO", "x\ny")


# --- a pipelined transaction ---------------------------------------------------------------

def run(tx: Transaction, script: list[RemoteReply]) -> list[bytes]:
    """Feed the replies in order; what the client wrote, write by write."""
    writes = [tx.start()]
    for reply in script:
        assert not tx.finished, "a reply after the transaction finished"
        out = tx.receive(reply)
        if out:
            writes.append(out)
    assert tx.finished
    return writes


def test_pipelined_group_is_one_write_and_the_message_follows_354():
    tx = Transaction("a@b.test", ["c@d.test", "e@d.test"], MSG, options=("BODY=8BITMIME",), pipelining=True)
    writes = run(tx, [R(250), R(250), R(250), R(354), R(250, "2.0.0 queued")])
    assert writes == [b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nDATA\r\n",
                      MSG]
    assert tx.delivered == ["c@d.test", "e@d.test"] and not tx.left_open and tx.closing is None


def test_pipelined_partial_rcpt_refusals_are_per_recipient():
    tx = Transaction("a@b.test", ["c@d.test", "nobody@d.test", "busy@d.test"], MSG, pipelining=True)
    writes = run(tx, [R(250), R(250), R(550, "5.1.1 unknown"), R(452, "4.2.2 full"), R(354), R(250)])
    assert writes[-1] == MSG
    assert tx.delivered == ["c@d.test"]
    assert tx.rcpts[1] == R(550, "5.1.1 unknown") and tx.rcpts[2] == R(452, "4.2.2 full")


def test_pipelined_every_rcpt_refused_and_data_refused_leaves_the_transaction_open():
    tx = Transaction("a@b.test", ["c@d.test", "e@d.test"], MSG, pipelining=True)
    writes = run(tx, [R(250), R(550), R(550), R(554, "5.5.1 no valid recipients")])
    assert len(writes) == 1, "no message octets"
    assert tx.delivered == [] and not tx.message_sent
    assert tx.left_open, "MAIL was accepted: RSET before the next transaction"


def test_pipelined_354_with_no_recipient_accepted_is_ended_with_a_lone_dot():
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=True)
    writes = run(tx, [R(250), R(550), R(354), R(554, "5.5.1 no valid recipients")])
    assert writes[-1] == b".\r\n" and not tx.message_sent
    assert tx.delivered == [] and not tx.left_open


def test_pipelined_refused_mail_reads_every_reply_of_the_group():
    tx = Transaction("a@b.test", ["c@d.test", "e@d.test"], MSG, pipelining=True)
    writes = run(tx, [R(553, "5.7.1 sender refused"), R(503), R(503), R(503)])
    assert len(writes) == 1 and tx.delivered == [] and not tx.left_open
    assert tx.mail == R(553, "5.7.1 sender refused")


@pytest.mark.parametrize("at", range(4))
def test_421_mid_session_ends_the_transaction_where_it_came(at):
    tx = Transaction("a@b.test", ["c@d.test", "e@d.test"], MSG, pipelining=True)
    script = [R(250), R(250), R(250), R(354), R(250)]
    script[at] = R(421, "4.4.2 closing")
    writes = run(tx, script[:at + 1])
    assert tx.closing == R(421, "4.4.2 closing") and tx.delivered == [] and not tx.left_open
    assert not tx.message_sent and len(writes) == 1
    with pytest.raises(ProtocolError):
        tx.receive(R(250))


def test_421_after_the_data_delivers_nothing():
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=True)
    run(tx, [R(250), R(250), R(354), R(421, "4.3.0 shutting down")])
    assert tx.message_sent and tx.delivered == [] and tx.closing is not None


def test_data_refused_sends_no_message():
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=True)
    writes = run(tx, [R(250), R(250), R(451, "4.3.0 try later")])
    assert len(writes) == 1 and tx.data == R(451, "4.3.0 try later") and tx.delivered == []
    assert tx.left_open


@pytest.mark.parametrize("code", [452, 552, 554])
def test_refusal_after_the_data_delivers_nothing_and_ends_the_transaction(code):
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=True)
    run(tx, [R(250), R(250), R(354), R(code)])
    assert tx.message_sent and tx.delivered == [] and not tx.left_open and tx.final.code == code


def test_a_reply_nobody_asked_for_is_a_protocol_error():
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=True)
    run(tx, [R(250), R(250), R(354), R(250)])
    with pytest.raises(ProtocolError):
        tx.receive(R(250))


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_2xx_to_data_is_a_protocol_error_not_a_delivery(pipelining):
    """RFC 5321 4.3.2: DATA is answered 354 (or refused); a server that says 250 instead has
    not taken a message the client never sent."""
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=pipelining)
    tx.start()
    tx.receive(R(250))
    if not pipelining:
        assert tx.receive(R(250)) == b"DATA\r\n"
    else:
        tx.receive(R(250))
    with pytest.raises(ProtocolError, match="250 to DATA"):
        tx.receive(R(250, "2.0.0 queued"))
    assert not tx.message_sent and tx.delivered == []


@pytest.mark.parametrize("at", range(3))
def test_a_3xx_to_anything_but_data_is_a_protocol_error(at):
    tx = Transaction("a@b.test", ["c@d.test"], MSG, pipelining=True)
    tx.start()
    script = [R(250), R(250), R(354), R(250)]
    script[at if at < 2 else 3] = R(354)
    with pytest.raises(ProtocolError, match="354 to"):
        for reply in script:
            tx.receive(reply)
    assert tx.delivered == []


# --- without PIPELINING: one command per round trip -----------------------------------------

def test_without_pipelining_each_command_waits_for_the_previous_reply():
    tx = Transaction("a@b.test", ["c@d.test", "e@d.test"], MSG)
    writes = run(tx, [R(250), R(550), R(250), R(354), R(250)])
    assert writes == [b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<c@d.test>\r\n", b"RCPT TO:<e@d.test>\r\n",
                      b"DATA\r\n", MSG]
    assert tx.delivered == ["e@d.test"]


def test_without_pipelining_a_refused_mail_sends_nothing_more():
    tx = Transaction("a@b.test", ["c@d.test"], MSG)
    assert run(tx, [R(451)]) == [b"MAIL FROM:<a@b.test>\r\n"]
    assert not tx.left_open


def test_without_pipelining_every_rcpt_refused_sends_no_data():
    tx = Transaction("", ["c@d.test", "e@d.test"], MSG)
    writes = run(tx, [R(250), R(550), R(550)])
    assert writes[0] == b"MAIL FROM:<>\r\n" and b"DATA\r\n" not in writes
    assert tx.left_open and tx.delivered == []
