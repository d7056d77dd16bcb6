"""The POP3 core fed bytes: the RFC 1939 dialogue, CAPA, STLS, SASL PLAIN, deletions only
at QUIT, limits, and hostile input."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.pop3 import (
    Authenticate, Close, Commit, MessageInfo, Pop3Server, Retrieve, StartTLS, State, dot_stuff,
)

MESSAGES = [MessageInfo(120, "uid-1"), MessageInfo(300, "uid-2")]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def server(**kw) -> tuple[Pop3Server, Clock]:
    clock = Clock()
    kw.setdefault("tls_available", True)
    srv = Pop3Server(clock, **kw)
    assert srv.data_to_send().startswith(b"+OK ")
    return srv, clock


def say(srv: Pop3Server, line: str | bytes) -> bytes:
    srv.receive_data(line if isinstance(line, bytes) else line.encode() + b"\r\n")
    return srv.data_to_send()


def logged_in(**kw) -> Pop3Server:
    srv, _ = server(tls_active=True, **kw)
    assert say(srv, "USER alice@acme.example") == b"+OK Send your password\r\n"
    say(srv, "PASS secret")
    assert srv.next_event() == Authenticate("alice@acme.example", "secret", "USER")
    srv.login_ok(MESSAGES)
    assert srv.data_to_send() == b"+OK alice@acme.example has 2 message(s) (420 octets)\r\n"
    return srv


def test_plaintext_auth_refused_before_tls_and_capa_says_stls():
    srv, _ = server()
    capa = say(srv, "CAPA")
    assert b"STLS\r\n" in capa and b"USER" not in capa and capa.endswith(b"\r\n.\r\n")
    assert say(srv, "USER alice").startswith(b"-ERR [AUTH]")
    assert say(srv, "STLS") == b"+OK Begin TLS negotiation\r\n"
    assert srv.next_event() == StartTLS()
    srv.tls_started()
    capa = say(srv, "CAPA")
    assert b"STLS" not in capa and b"USER\r\n" in capa and b"SASL PLAIN LOGIN\r\n" in capa
    assert say(srv, "STLS").startswith(b"-ERR")


def test_stls_discards_pipelined_commands():
    srv, _ = server()
    srv.receive_data(b"STLS\r\nUSER injected\r\n")
    assert srv.data_to_send() == b"+OK Begin TLS negotiation\r\n" and srv.next_event() == StartTLS()
    srv.tls_started()
    assert srv.data_to_send() == b"" and srv.next_event() is None


def test_transaction_commands_and_deletions_only_at_quit():
    srv = logged_in()
    assert say(srv, "STAT") == b"+OK 2 420\r\n"
    assert say(srv, "LIST") == b"+OK listing follows\r\n1 120\r\n2 300\r\n.\r\n"
    assert say(srv, "UIDL 2") == b"+OK 2 uid-2\r\n"
    assert say(srv, "DELE 1") == b"+OK Message 1 deleted\r\n"
    assert say(srv, "DELE 1").startswith(b"-ERR")
    assert say(srv, "RETR 1").startswith(b"-ERR")
    assert say(srv, "LIST") == b"+OK listing follows\r\n2 300\r\n.\r\n"
    assert say(srv, "STAT") == b"+OK 1 300\r\n"
    assert say(srv, "RSET") == b"+OK 2 message(s)\r\n"
    assert say(srv, "DELE 2").startswith(b"+OK")
    assert say(srv, "LIST 3") == b"-ERR No message 3\r\n"
    assert say(srv, "NOOP") == b"+OK \r\n"
    assert say(srv, "QUIT") == b""
    assert srv.next_event() == Commit((2,)) and srv.state == State.UPDATE
    srv.committed()
    assert srv.data_to_send() == b"+OK Bye; deletions done\r\n" and isinstance(srv.next_event(), Close)


def test_a_dropped_or_ended_session_deletes_nothing():
    srv = logged_in()
    say(srv, "DELE 1")
    srv.goodbye()
    assert srv.data_to_send().startswith(b"-ERR [SYS/TEMP]")
    assert isinstance(srv.next_event(), Close) and srv.next_event() is None   # no Commit


def test_retr_and_top_are_dot_stuffed():
    srv = logged_in()
    assert say(srv, "RETR 2") == b"" and srv.next_event() == Retrieve(2)
    srv.send_message([b"Subject: x\r\n\r\n.hidden\r\nline 2\r", b"\n.\r\nlast"])
    assert srv.data_to_send() == b"+OK message follows\r\nSubject: x\r\n\r\n..hidden\r\nline 2\r\n..\r\nlast\r\n.\r\n"
    say(srv, "TOP 1 1")
    assert srv.next_event() == Retrieve(1, 1)
    srv.send_message([b"A: 1\r\nB: 2\r\n\r\nbody 1\r\nbody 2\r\n"], top_lines=1)
    assert srv.data_to_send() == b"+OK message follows\r\nA: 1\r\nB: 2\r\n\r\nbody 1\r\n.\r\n"
    assert dot_stuff([b"H: 1\r\n\r\nb\r\n"], top_lines=0) == b"H: 1\r\n\r\n.\r\n"


def test_sasl_plain_with_and_without_initial_response():
    srv, _ = server(tls_active=True)
    token = base64.b64encode(b"\x00bob@acme.example\x00pw").decode()
    say(srv, f"AUTH PLAIN {token}")
    assert srv.next_event() == Authenticate("bob@acme.example", "pw", "PLAIN")
    srv.login_failed()
    assert srv.data_to_send() == b"-ERR [AUTH] Authentication failed\r\n" and srv.state == State.AUTHORIZATION
    assert say(srv, "AUTH PLAIN") == b"+ \r\n"
    say(srv, token)
    assert srv.next_event() == Authenticate("bob@acme.example", "pw", "PLAIN")
    srv.login_ok([])
    assert srv.data_to_send().startswith(b"+OK")
    srv2, _ = server(tls_active=True)
    assert say(srv2, "AUTH PLAIN") == b"+ \r\n"
    assert say(srv2, "*") == b"-ERR Authentication cancelled\r\n"
    assert say(srv2, "AUTH PLAIN !!!notbase64").startswith(b"-ERR [AUTH]")
    assert say(srv2, "AUTH CRAM-MD5").startswith(b"-ERR")


def test_commands_out_of_state_and_unknown():
    srv, _ = server(tls_active=True)
    assert say(srv, "STAT") == b"-ERR STAT not valid in this state\r\n"
    assert say(srv, "PASS x") == b"-ERR USER first\r\n"
    assert say(srv, "XYZZY") == b"-ERR XYZZY not valid here\r\n"
    srv = logged_in()
    assert say(srv, "USER again").startswith(b"-ERR")
    assert say(srv, "RETR abc") == b"-ERR Need a message number\r\n"
    assert say(srv, "RETR 99999999999999999999") == b"-ERR Need a message number\r\n"


def test_long_lines_are_refused_without_buffering():
    srv, _ = server(tls_active=True)
    srv.receive_data(b"USER " + b"a" * 10_000)
    assert srv.data_to_send() == b"-ERR Line too long\r\n"
    srv.receive_data(b"b" * 100_000)
    assert len(srv._in) == 0                       # discarded as it arrives
    srv.receive_data(b"\r\nNOOP\r\n")
    assert srv.data_to_send() == b"-ERR NOOP only after login\r\n"


def test_too_many_errors_and_idle_timeout():
    srv, clock = server(max_errors=3)
    for _ in range(3):
        say(srv, "BOGUS")
    assert srv.state == State.CLOSED and isinstance(srv.next_event(), Close)
    srv, clock = server()
    clock.t += 599
    srv.handle_timer(clock.t)
    assert srv.state == State.AUTHORIZATION
    clock.t += 2
    srv.handle_timer(clock.t)
    # closed without a word (RFC 1939 §3), and without UPDATE
    assert srv.state == State.CLOSED and srv.data_to_send() == b"" and srv.next_event() == Close("idle timeout")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300),
                          st.sampled_from([b"USER a\r\n", b"PASS b\r\n", b"STAT\r\n", b"LIST\r\n", b"RETR 1\r\n",
                                           b"TOP 1 5\r\n", b"DELE 1\r\n", b"AUTH PLAIN\r\n", b"QUIT\r\n",
                                           b"STLS\r\n", b"CAPA\r\n", b"\r\n", b"AUTH PLAIN =\r\n"])),
                max_size=25))
def test_any_input_gets_protocol_answers(chunks):
    srv, _ = server(tls_active=True)
    for chunk in chunks:
        srv.receive_data(chunk)
        while (event := srv.next_event()) is not None:
            if isinstance(event, Authenticate):
                srv.login_ok(MESSAGES)
            elif isinstance(event, Retrieve):
                srv.send_message([b"Subject: s\r\n\r\nbody\r\n"], event.top_lines)
            elif isinstance(event, Commit):
                srv.committed()
            elif isinstance(event, StartTLS):
                srv.tls_started()
        out = srv.data_to_send()
        for line in out.split(b"\r\n"):
            assert len(line) < 400
    assert len(srv._in) <= 4096 + 300


def test_numbers_are_ascii_digits_and_top_takes_any_line_count():
    # '²'.isdigit() is True and int('²') raises: RETR ² was a traceback in the store.
    srv = logged_in()
    assert say(srv, "RETR ²") == b"-ERR Need a message number\r\n"
    assert say(srv, "TOP 1 ²") == b"-ERR TOP needs a message number and a line count\r\n"
    assert say(srv, "DELE ①") == b"-ERR Need a message number\r\n"
    # More lines than the body has is the whole message (RFC 1939 §7), however many digits.
    assert say(srv, "TOP 1 99999999999999999999") == b""
    assert srv.next_event() == Retrieve(1, 2 ** 31)


def test_pipelined_commands_wait_while_the_output_is_not_taken():
    # RETR pipelined without reading: each answer is a whole message, and all of them were
    # queued before the shell could write one (a 1 MB message asked 3,000 times grew the
    # store by 3 GB). Past MAX_OUTPUT the core waits for data_to_send().
    from colony.protocols.pop3.rules import MAX_OUTPUT
    srv = logged_in()
    srv.receive_data(b"RETR 1\r\n" * 1000)
    served = 0
    while (event := srv.next_event()) is not None:
        assert event == Retrieve(1)
        srv.send_message([b"x" * 100_000])
        served += 1
    assert served == 1 and len(srv._out) < MAX_OUTPUT + 100_100
    total = 0
    while True:                     # as a shell does: events, then output, until both are empty
        out = srv.data_to_send()
        event = srv.next_event()
        if not out and event is None:
            break
        total += len(out)
        if event is not None:
            srv.send_message([b"x" * 100_000])
            served += 1
        assert len(srv._out) < MAX_OUTPUT + 100_100
    assert served == 1000 and total > 1000 * 100_000
    srv.receive_data(b"LIST\r\n" * 10_000)           # answered by the core itself: bounded too
    assert len(srv._out) < MAX_OUTPUT + 100
    answers = b""
    while out := srv.data_to_send():
        answers += out
    assert answers.count(b"+OK listing follows") == 10_000


def test_sasl_plain_with_another_users_authzid_is_refused():
    srv, _ = server(tls_active=True)
    out = say(srv, "AUTH PLAIN " + base64.b64encode(b"bob@x.example\0alice@x.example\0pw").decode())
    assert out == b"-ERR [AUTH] Acting as another user is not allowed\r\n" and srv.next_event() is None
    say(srv, "AUTH PLAIN " + base64.b64encode(b"alice@x.example\0alice@x.example\0pw").decode())
    assert srv.next_event() == Authenticate("alice@x.example", "pw", "PLAIN", "alice@x.example")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_sasl_login_asks_for_the_user_name_then_the_password():
    """AUTH LOGIN (RFC 5034 exchange, draft-murchison-sasl-login prompts): "+ " with base64
    "Username:" and "Password:"; an initial response is the user name."""
    srv, _ = server(tls_active=True)
    assert say(srv, "AUTH") == b"+OK \r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert say(srv, "AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n" and srv.next_event() is None
    assert say(srv, b64("bob@acme.example")) == b"+ UGFzc3dvcmQ6\r\n" and srv.next_event() is None
    say(srv, b64("pässwört"))
    assert srv.next_event() == Authenticate("bob@acme.example", "pässwört", "LOGIN")
    srv.login_ok(MESSAGES)
    assert srv.data_to_send() == b"+OK bob@acme.example has 2 message(s) (420 octets)\r\n"
    srv, _ = server(tls_active=True)
    assert say(srv, "AUTH login " + b64("bob@acme.example")) == b"+ UGFzc3dvcmQ6\r\n"
    say(srv, b64("pw"))
    assert srv.next_event() == Authenticate("bob@acme.example", "pw", "LOGIN")


def test_sasl_login_cancel_and_bad_base64_are_refused_and_end_the_exchange():
    for step in (0, 1):
        for answer, reply in (("*", b"-ERR Authentication cancelled\r\n"),
                              ("!!not base64!!", b"-ERR [AUTH] Malformed LOGIN response\r\n")):
            srv, _ = server(tls_active=True)
            say(srv, "AUTH LOGIN")
            if step:
                say(srv, b64("bob@acme.example"))
            assert say(srv, answer) == reply and srv.next_event() is None
            assert say(srv, "CAPA").startswith(b"+OK Capability")      # a command again
    srv, _ = server(tls_active=True)
    assert say(srv, "AUTH LOGIN =") == b"-ERR [AUTH] Malformed LOGIN response\r\n"


def test_sasl_login_answers_an_unknown_user_as_a_wrong_password():
    """The password is asked for whatever the user name; the refusal is the shell's, the same
    for both: no account can be told from a missing one."""
    heard = []
    for user in ("bob@acme.example", "nobody@acme.example"):
        srv, _ = server(tls_active=True)
        out = say(srv, "AUTH LOGIN " + b64(user)) + say(srv, b64("wrong"))
        assert srv.next_event() == Authenticate(user, "wrong", "LOGIN")
        srv.login_failed()
        heard.append(out + srv.data_to_send())
    assert heard[0] == heard[1] == b"+ UGFzc3dvcmQ6\r\n-ERR [AUTH] Authentication failed\r\n"


def test_sasl_login_is_neither_offered_nor_taken_before_tls():
    srv, _ = server()
    assert b"SASL" not in say(srv, "CAPA")
    assert say(srv, "AUTH LOGIN").startswith(b"-ERR [AUTH] Plaintext authentication needs TLS")
    assert say(srv, "AUTH LOGIN " + b64("bob@acme.example")).startswith(b"-ERR [AUTH]")
    assert srv.next_event() is None
    srv, _ = server(allow_plaintext=True)
    assert b"SASL PLAIN LOGIN\r\n" in say(srv, "CAPA")
