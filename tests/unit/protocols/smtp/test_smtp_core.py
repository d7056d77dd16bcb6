"""The SMTP core, command by command: bytes in, replies and events out."""

from __future__ import annotations

import pytest

from colony.protocols.smtp import NEED_DATA, PAUSED, Reply, events as E, replies as R
from smtp_driver import Driver, codes


def test_greeting_then_ehlo_advertises_every_extension():
    d = Driver(tls_available=True)
    assert d.out == b"220 mx.test ESMTP Colony\r\n"
    out = d.feed(b"EHLO client.test\r\n")
    for ext in (b"PIPELINING", b"SIZE 67108864", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES",
                b"CHUNKING", b"DSN", b"STARTTLS", b"BINARYMIME"):
        assert b"250-" + ext + b"\r\n" in out or b"250 " + ext + b"\r\n" in out
    assert d.of(E.Helo) == [E.Helo("client.test", True)]


def test_early_talker_is_refused_and_closed():
    d = Driver(greet=False)
    d.conn.receive_data(b"EHLO fast.test\r\n", 0.1)
    out = d.conn.greet(1.0)
    assert codes(out) == ["554 5.5.0"] and R.EARLY_TALKER.to_bytes() == out
    d.pump()
    assert d.conn.closed and d.of(E.ConnectionClosed)[0].reply == R.EARLY_TALKER


def test_refused_connection():
    d = Driver(greet=False)
    assert d.conn.refuse(R.CONNECTION_REFUSED) == b"554 5.7.1 Connection refused\r\n"
    assert d.conn.closed


def test_helo_has_no_extensions_and_forbids_pipelining():
    d = Driver()
    out = d.feed(b"HELO client.test\r\n")
    assert out == b"250 mx.test Hello client.test\r\n"
    out = d.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert codes(out) == ["554 5.5.0"] and d.conn.closed
    assert not d.of(E.MailFrom)


def test_pipelining_before_ehlo_is_refused():
    d = Driver()
    out = d.feed(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n")
    assert codes(out) == ["554 5.5.0"] and d.conn.closed


def test_pipelined_transaction_after_ehlo_answers_in_order():
    d = Driver()
    d.feed(b"EHLO client.test\r\n")
    out = d.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nDATA\r\n")
    assert codes(out) == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]
    out = d.feed(b"Hi\r\n.\r\nQUIT\r\n")
    assert codes(out) == ["250 2.0.0", "221 2.0.0"]
    assert d.messages == [b"Hi\r\n"]


def test_commands_need_their_predecessors():
    d = Driver()
    assert codes(d.feed(b"MAIL FROM:<a@b.test>\r\n")) == ["503 5.5.1"]
    d.feed(b"EHLO c.test\r\n")
    assert codes(d.feed(b"RCPT TO:<a@b.test>\r\n")) == ["503 5.5.1"]
    assert codes(d.feed(b"DATA\r\n")) == ["503 5.5.1"]
    d.feed(b"MAIL FROM:<a@b.test>\r\n")
    assert codes(d.feed(b"MAIL FROM:<a@b.test>\r\n")) == ["503 5.5.1"]
    assert codes(d.feed(b"DATA\r\n")) == ["554 5.5.1"]


def test_mail_parameters():
    d = Driver(max_message_size=1000)
    d.feed(b"EHLO c.test\r\n")
    d.feed(b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=ab+2Bc AUTH=<>\r\n")
    assert d.of(E.MailFrom)[-1] == E.MailFrom("a@b.test", size=100, body="8BITMIME", ret="HDRS", envid="ab+c")
    d.feed(b"RSET\r\n")
    assert codes(d.feed(b"MAIL FROM:<a@b.test> SIZE=1001\r\n")) == ["552 5.3.4"]
    assert codes(d.feed(b"MAIL FROM:<a@b.test> FOO=1\r\n")) == ["555 5.5.4"]
    assert codes(d.feed(b"MAIL FROM:<a@b.test> BODY=9BIT\r\n")) == ["501 5.5.4"]
    assert codes(d.feed(b"MAIL FROM:<j\xc3\xb6rg@b.test>\r\n")) == ["553 5.6.7"]
    assert codes(d.feed(b"MAIL FROM:<not an address>\r\n")) == ["501 5.1.7"]
    assert codes(d.feed(b"MAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8\r\n")) == ["250 2.1.0"]
    assert d.of(E.MailFrom)[-1].smtputf8 and d.of(E.MailFrom)[-1].address == "jörg@b.test"


def test_null_sender_and_source_route_and_space_after_colon():
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    d.feed(b"MAIL FROM: <>\r\n")
    assert d.of(E.MailFrom)[-1].address == ""
    d.feed(b"RCPT TO:<@relay.test:x@y.test>\r\n")
    d.feed(b"RCPT TO:<Postmaster>\r\n")
    assert [r.address for r in d.of(E.RcptTo)] == ["x@y.test", "Postmaster"]


def test_rcpt_dsn_parameters():
    d = Driver()
    d.feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n".split(b"\r\n")[0] + b"\r\n")
    d.feed(b"MAIL FROM:<a@b.test>\r\n")
    d.feed(b"RCPT TO:<x@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;X+40Y@y.test\r\n")
    assert d.of(E.RcptTo)[-1] == E.RcptTo("x@y.test", notify=("SUCCESS", "DELAY"), orcpt="rfc822;X@Y@y.test")
    assert codes(d.feed(b"RCPT TO:<x@y.test> NOTIFY=NEVER,SUCCESS\r\n")) == ["501 5.5.4"]
    assert codes(d.feed(b"RCPT TO:<x@y.test> ORCPT=bad\r\n")) == ["501 5.5.4"]
    assert codes(d.feed(b"RCPT TO:<>\r\n")) == ["501 5.1.3"]


def test_too_many_recipients_is_452_and_not_an_error():
    d = Driver(max_recipients=2, max_errors=2)
    d.session()
    d.feed(b"RCPT TO:<c@example.com>\r\n")
    assert codes(d.feed(b"RCPT TO:<d@example.com>\r\n")) == ["452 4.5.3"]
    assert codes(d.feed(b"RCPT TO:<e@example.com>\r\n")) == ["452 4.5.3"]
    assert not d.conn.closed
    assert codes(d.feed(b"DATA\r\n")) == ["354"]


def test_policy_refusal_is_sent_verbatim_and_counts():
    d = Driver(answers={E.RcptTo: Reply(550, "5.1.1", "no such user here", "unknown_user")})
    d.session()
    assert d.out.endswith(b"550 5.1.1 no such user here\r\n")
    assert not d.of(E.Rejected)  # the policy's refusal is the shell's to meter, not reported twice


def test_dot_stuffing_and_terminator_split_across_reads():
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    for piece in (b"Subject: t\r\n\r\n..leading dot\r\n.", b"x\r\nlast\r", b"\n.", b"\r", b"\n"):
        d.feed(piece)
    assert d.messages == [b"Subject: t\r\n\r\n.leading dot\r\nx\r\nlast\r\n"]
    assert codes(d.out)[-1] == "250 2.0.0"


def test_body_is_streamed_not_held():
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    line = b"x" * 998 + b"\r\n"
    for _ in range(100):
        d.feed(line * 60)
        assert len(d.conn._buf) < 1000  # nothing but a partial line stays in the core
    d.feed(b".\r\n")
    assert len(d.messages[0]) == 6000 * 1000
    assert len(d.of(E.DataChunk)) == 100


def test_data_line_longer_than_1000_fails_the_message_at_its_end():
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    d.feed(b"x" * 999)
    d.feed(b"y" * 5000)
    out = d.feed(b"\r\nok\r\n.\r\n")
    assert codes(out) == ["552 5.5.2"] and not d.messages and d.of(E.MessageAborted)
    assert len(d.conn._buf) == 0
    assert codes(d.feed(b"NOOP\r\n")) == ["250 2.0.0"]


def test_message_over_size_limit_552_and_nothing_past_the_limit_emitted():
    d = Driver(max_message_size=10_000)
    d.session()
    d.feed(b"DATA\r\n")
    d.feed((b"z" * 98 + b"\r\n") * 200)
    assert codes(d.feed(b".\r\n")) == ["552 5.3.4"]
    assert sum(len(c.data) for c in d.of(E.DataChunk)) <= 10_000


def test_per_transaction_limit():
    d = Driver()
    d.session()
    d.conn.limit_message_size(50)
    d.feed(b"DATA\r\n")
    assert codes(d.feed(b"x" * 60 + b"\r\n.\r\n")) == ["552 5.3.4"]


def test_command_line_too_long_is_skipped_without_buffering():
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    out = d.feed(b"NOOP " + b"a" * 600)
    assert codes(out) == ["500 5.5.2"]
    assert len(d.conn._buf) < 512
    d.feed(b"b" * 100_000)
    assert len(d.conn._buf) <= 1
    assert codes(d.feed(b"\r\nNOOP\r\n")) == ["250 2.0.0"]


def test_bare_lf_in_command_closes():
    d = Driver()
    assert codes(d.feed(b"EHLO c.test\n")) == ["554 5.5.2"]
    assert d.conn.closed


def test_bare_cr_in_command_closes():
    d = Driver()
    assert codes(d.feed(b"EHLO c.test\rMAIL FROM:<a@b.test>\r\n")) == ["554 5.5.2"]


def test_bdat_chunks():
    d = Driver()
    d.session()
    out = d.feed(b"BDAT 5\r\nhello")
    assert codes(out) == ["250 2.0.0"] and b"5 octets" in out
    out = d.feed(b"BDAT 8 LAST\r\n\r\n.\n\rx\r\n")
    assert codes(out) == ["250 2.0.0"]
    assert d.messages == [b"hello\r\n.\n\rx\r\n"]  # BDAT octets are taken as they are
    assert d.of(E.DataComplete)[-1] == E.DataComplete(13, True)


def test_bdat_split_and_pipelined():
    d = Driver()
    d.session()
    d.feed(b"BDAT 10\r\n01234")
    d.feed(b"56789BDAT 0 LAST\r\n")
    assert d.messages == [b"0123456789"]


def test_bdat_without_transaction_consumes_the_chunk():
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    out = d.feed(b"BDAT 13 LAST\r\nRCPT TO:<x>\r\n")
    assert codes(out) == ["503 5.5.1"] and not d.of(E.RcptTo)
    assert codes(d.feed(b"BDAT x\r\n")) == ["501 5.5.4"] and d.conn.closed


def test_bdat_over_size():
    d = Driver(max_message_size=100)
    d.session()
    out = d.feed(b"BDAT 200 LAST\r\n" + b"x" * 200)
    assert codes(out) == ["552 5.3.4"] and not d.messages
    assert codes(d.feed(b"NOOP\r\n")) == ["250 2.0.0"]


def test_binarymime_needs_bdat():
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    d.feed(b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")
    d.feed(b"RCPT TO:<x@y.test>\r\n")
    assert codes(d.feed(b"DATA\r\n")) == ["503 5.5.1"]
    d.feed(b"BDAT 3 LAST\r\n\x00\xff\n")
    assert d.messages == [b"\x00\xff\n"]


def test_starttls_discards_pipelined_commands_and_restarts_session():
    d = Driver(tls_available=True)
    d.feed(b"EHLO c.test\r\n")
    out = d.feed(b"STARTTLS\r\nMAIL FROM:<evil@b.test>\r\n")
    assert codes(out) == ["220 2.0.0"]
    assert d.of(E.StartTls) == [E.StartTls(discarded=len(b"MAIL FROM:<evil@b.test>\r\n"))]
    assert d.conn.next_event() is PAUSED
    d.conn.receive_data(b"RCPT TO:<x@y.test>\r\n", 2)  # still plaintext: dropped
    d.conn.tls_started(3)
    assert codes(d.feed(b"MAIL FROM:<a@b.test>\r\n")) == ["503 5.5.1"]
    out = d.feed(b"EHLO c.test\r\n")
    assert b"STARTTLS" not in out and d.conn.tls_active
    assert codes(d.feed(b"STARTTLS\r\n")) == ["503 5.5.1"]


def test_starttls_when_not_offered():
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    assert codes(d.feed(b"STARTTLS\r\n")) == ["454 4.7.0"]


@pytest.mark.parametrize("command,expected", [
    (b"NOOP", "250 2.0.0"), (b"RSET", "250 2.0.0"), (b"VRFY bob", "252 2.1.5"), (b"HELP", "214 2.0.0"),
    (b"EXPN list", "502 5.5.1"), (b"AUTH PLAIN", "502 5.5.1"), (b"FOO", "500 5.5.1"), (b"EHLO", "501 5.5.4"),
    (b"QUIT", "221 2.0.0"),
])
def test_simple_commands(command, expected):
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    assert codes(d.feed(command + b"\r\n")) == [expected]


def test_rset_ends_the_transaction():
    d = Driver()
    d.session()
    d.feed(b"RSET\r\n")
    assert d.of(E.TransactionReset)
    assert codes(d.feed(b"DATA\r\n")) == ["503 5.5.1"]


def test_too_many_errors_421_and_close():
    d = Driver(max_errors=3)
    out = d.feed(b"FOO\r\n") + d.feed(b"BAR\r\n") + d.feed(b"BAZ\r\n")
    assert codes(out) == ["500 5.5.1", "500 5.5.1", "500 5.5.1", "421 4.7.0"]
    assert d.conn.closed
    assert d.feed(b"NOOP\r\n") == b""


def test_timeout_uses_the_injected_clock():
    d = Driver(timeout=300)
    d.feed(b"EHLO c.test\r\n", now=10)
    assert d.conn.get_timer() == 310
    d.conn.handle_timer(309)
    assert not d.conn.closed
    d.conn.handle_timer(310)
    d.pump()
    assert codes(bytes(d.out))[-1] == "421 4.4.2" and d.conn.closed


def test_timeout_in_data_aborts_the_message():
    d = Driver(timeout=5)
    d.session()
    d.feed(b"DATA\r\n", now=2)
    d.feed(b"half a mess", now=2)
    d.conn.handle_timer(100)
    d.pump()
    assert d.of(E.MessageAborted) and not d.messages


def test_client_disconnect_mid_message():
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    d.feed(b"partial\r\n")
    d.feed(b"")
    assert d.of(E.MessageAborted) and d.of(E.ConnectionClosed) and not d.messages


def test_shutdown_while_policy_decides():
    # The policy's answer first, then 421: the command was taken and is answered.
    d = Driver()
    d.conn.receive_data(b"HELO c.test\r\n", 1)
    assert isinstance(d.conn.next_event(), E.Helo)
    d.conn.shutdown()
    assert d.conn.data_to_send() == b"" and not d.conn.closed
    assert d.conn.send(R.OK) == b"250 mx.test Hello c.test\r\n421 4.3.2 Service shutting down; try again later\r\n"
    assert d.conn.closed and d.conn.next_event() == E.ConnectionClosed(R.SHUTTING_DOWN)


def test_shutdown_while_a_message_is_made_durable_answers_it_first():
    # A 421 in place of the 250 would have the client send the message again once it had
    # been kept: a duplicate.  The 250 goes out, then the 421.
    d = Driver()
    d.session()
    d.feed(b"DATA\r\n")
    d.conn.receive_data(b"hello\r\n.\r\n", 2)
    while not isinstance(event := d.conn.next_event(), E.DataComplete):
        assert event not in (NEED_DATA, PAUSED)
    d.conn.shutdown()
    assert d.conn.data_to_send() == b""
    out = d.conn.send(R.QUEUED)
    assert codes(out) == ["250 2.0.0", "421 4.3.2"] and d.conn.closed
    assert not any(isinstance(e, E.MessageAborted) for e in iter(d.conn.next_event, PAUSED))


def test_mail_and_rcpt_lines_may_carry_long_parameters():
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    envid = b"e" * 100
    assert codes(d.feed(b"MAIL FROM:<a@b.test> RET=HDRS ENVID=" + envid + b" SIZE=100 BODY=8BITMIME\r\n")) == ["250 2.1.0"]
    orcpt = b"rfc822;" + b"o" * 240 + b"@" + b"d" * 200 + b".test"
    line = b"RCPT TO:<" + b"x" * 60 + b"@y.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" + orcpt + b"\r\n"
    assert len(line) > 512
    assert codes(d.feed(line)) == ["250 2.1.5"]
    assert codes(d.feed(b"RCPT TO:<x@y.test> ORCPT=rfc822;" + b"z" * 1600 + b"\r\n")) == ["500 5.5.2"]
    assert codes(d.feed(b"NOOP\r\n")) == ["250 2.0.0"]


@pytest.mark.parametrize("name,ok", [(b"mx.example.com", True), (b"my_pc", True), (b"[192.0.2.1]", True),
                                     (b"[IPv6:2001:db8::1]", True), (b"host.", True), (b"bad..name", False),
                                     (b"-x", False), (b"a b", True)])
def test_helo_names(name, ok):
    d = Driver()
    out = d.feed(b"EHLO " + name + b"\r\n")
    assert out.startswith(b"250") == ok, out
