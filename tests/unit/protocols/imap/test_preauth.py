"""The edge's IMAP pre-authentication core: bytes in, events and bytes out."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.imap.preauth import Authenticate, Close, ImapPreauth, StartTLS


def core(**kw) -> ImapPreauth:
    c = ImapPreauth(tls_available=True, **kw)
    assert c.data_to_send().startswith(b"* OK [CAPABILITY IMAP4rev1")
    return c


def test_login_before_tls_is_refused_and_starttls_upgrades():
    c = core()
    c.receive_data(b"a1 CAPABILITY\r\n")
    out = c.data_to_send()
    assert b"STARTTLS" in out and b"LOGINDISABLED" in out and b"a1 OK" in out
    c.receive_data(b'a2 LOGIN alice "pw"\r\n')
    assert b"a2 NO [PRIVACYREQUIRED]" in c.data_to_send()
    c.receive_data(b"a3 STARTTLS\r\na4 LOGIN injected pw\r\n")   # pipelined before TLS: dropped
    assert c.data_to_send() == b"a3 OK Begin TLS negotiation now\r\n"
    assert isinstance(c.next_event(), StartTLS) and c.next_event() is None
    c.tls_started()
    c.receive_data(b"a5 CAPABILITY\r\n")
    out = c.data_to_send()
    assert b"AUTH=PLAIN" in out and b"STARTTLS" not in out and b"LOGINDISABLED" not in out


def test_login_with_quoted_and_literal_arguments_then_the_stores_line_tagged():
    c = core(tls_active=True)
    c.receive_data(b'x LOGIN "alice@acme.example" {5}\r\n')
    assert c.data_to_send() == b"+ Ready for literal\r\n"
    c.receive_data(b'p"w\\d\r\nx2 NOOP\r\n')
    ev = c.next_event()
    assert ev == Authenticate("x", "alice@acme.example", 'p"w\\d', "LOGIN")
    c.login_ok("OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
    assert c.data_to_send() == b"x OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
    assert c.leftover() == b"x2 NOOP\r\n"


def test_authenticate_plain_with_sasl_ir_and_with_a_continuation_and_failures():
    c = core(tls_active=True)
    ir = base64.b64encode(b"\x00alice@acme.example\x00secret").decode()
    c.receive_data(f"t1 AUTHENTICATE PLAIN {ir}\r\n".encode())
    assert c.next_event() == Authenticate("t1", "alice@acme.example", "secret", "PLAIN")
    c.login_failed("AUTHENTICATIONFAILED", "Authentication failed")
    assert c.data_to_send() == b"t1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    c.receive_data(b"t2 AUTHENTICATE PLAIN\r\n")
    assert c.data_to_send() == b"+ \r\n"
    c.receive_data(ir.encode() + b"\r\n")
    assert isinstance(c.next_event(), Authenticate)


def test_other_commands_are_bad_before_login_and_logout_closes():
    c = core()
    c.receive_data(b"a SELECT INBOX\r\nb LOGOUT\r\n")
    out = c.data_to_send()
    assert b"a BAD" in out and b"* BYE" in out and b"b OK LOGOUT" in out
    assert isinstance(c.next_event(), Close)


def test_huge_lines_and_literals_are_refused_without_buffering():
    c = core(tls_active=True, max_line=1024)
    c.receive_data(b"a LOGIN " + b"x" * 5000)
    assert b"* BAD Line too long" in c.data_to_send()
    assert len(c._in) == 0
    c.receive_data(b"y" * 100_000 + b"\r\nb LOGIN u {99999999}\r\n")
    assert b"b BAD Literal too large" in c.data_to_send()
    c.receive_data(b"c LOGIN u {4000000000+}\r\n" + b"z" * 10_000)   # non-synchronizing: counted off
    assert b"c BAD" in c.data_to_send() and len(c._in) == 0 and len(c._literal_buf) == 0


def test_too_many_errors_say_bye():
    c = core(max_errors=3)
    c.receive_data(b"a FOO\r\nb BAR\r\nc BAZ\r\nd NOOP\r\n")
    out = c.data_to_send()
    assert out.count(b"BAD") == 3 and b"* BYE" in out and b"d OK" not in out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_hostile_input_gives_protocol_answers_and_bounded_memory(chunks):
    c = ImapPreauth(tls_available=True, tls_active=True, max_line=1024)
    for chunk in chunks:
        c.receive_data(chunk)
        while (ev := c.next_event()) is not None:
            if isinstance(ev, Authenticate):
                c.login_failed("AUTHENTICATIONFAILED", "no")
            elif isinstance(ev, StartTLS):
                c.tls_started()
        assert len(c._in) <= 1024 + 3000 and len(c._literal_buf) <= 1024
        for line in c.data_to_send().split(b"\r\n")[:-1]:
            assert line.split(b" ")[1:2] in ([b"OK"], [b"NO"], [b"BAD"], [b"BYE"], [b"CAPABILITY"], [b"ID"]) \
                or line.startswith(b"+ "), line


def test_a_command_cannot_grow_without_end_through_literals():
    # Each literal continues the command with another line: without a bound on literals one
    # command held everything a client sent before login, max_line at a time.
    c = core(tls_active=True, max_line=1024, max_errors=1000)
    c.receive_data(b"a LOGIN {1000+}\r\n" + b"u" * 1000 + b" {1000+}\r\n" + b"p" * 1000)
    for _ in range(200):
        c.receive_data(b" {1000+}\r\n" + b"x" * 1000)
        assert sum(len(p) for p in c._parts) <= 3 * 1024 and len(c._literal_buf) <= 1024
    assert b"a BAD Bad syntax: too many literals" in c.data_to_send()
    c = core(tls_active=True)
    c.receive_data(b"b LOGIN {1+}\r\nu {2+}\r\npw\r\n")     # LOGIN's two literals are fine
    assert c.next_event() == Authenticate("b", "u", "pw", "LOGIN")


def test_a_literal_is_never_taken_as_the_tag():
    # The tag is echoed in the answer: from a literal it could carry CRLF and forge lines.
    c = core(tls_active=True)
    c.receive_data(b"{16+}\r\nx OK fake\r\n* BYE NOOP\r\n")
    out = c.data_to_send()
    assert b"x OK fake" not in out and out.startswith(b"* BAD")
    c.receive_data(b'"x\ry" NOOP\r\n{b NOOP\r\n')
    out = c.data_to_send()
    assert out == b"* BAD Bad syntax: bad tag\r\n" * 2


def test_id_with_a_parameter_list_before_login():
    # RFC 2971: clients (Apple Mail, K-9...) send ID with their name and version before login.
    c = core(tls_active=True)
    c.receive_data(b'a ID ("name" "Thunderbird" "version" "115.0")\r\nb id NIL\r\n')
    out = c.data_to_send()
    assert out.count(b'* ID ("name" "Colony")') == 2 and b"a OK ID" in out and b"b OK ID" in out
    assert b"BAD" not in out


def test_plain_with_another_users_authzid_is_refused():
    # The edge logs in the authcid only; with authzid bob and alice's password the client
    # was logged in as alice while asking to act as bob (RFC 4616 §2: fail instead).
    c = core(tls_active=True)
    c.receive_data(b"a AUTHENTICATE PLAIN " + base64.b64encode(b"bob@x.example\0alice@x.example\0pw") + b"\r\n")
    assert c.data_to_send() == b"a NO [AUTHORIZATIONFAILED] Acting as another user is not allowed\r\n"
    assert c.next_event() is None
    c.receive_data(b"b AUTHENTICATE PLAIN " + base64.b64encode(b"Alice@x.example\0alice@x.example\0pw") + b"\r\n")
    assert c.next_event() == Authenticate("b", "alice@x.example", "pw", "PLAIN", "Alice@x.example")


def test_login_arguments_are_astrings_with_a_bracket():
    # RFC 9051 §9: astring = 1*ASTRING-CHAR / string, and ASTRING-CHAR takes ']': an
    # unquoted password with ']' is a valid LOGIN (it was BAD, counted as an error).
    c = core(tls_active=True)
    c.receive_data(b"a LOGIN alice@x.example pa]ss\r\n")
    assert c.next_event() == Authenticate("a", "alice@x.example", "pa]ss", "LOGIN")
    assert b"BAD" not in c.data_to_send()


def test_a_command_dropped_for_a_long_line_leaves_no_literal_behind():
    # The literals of a command cut off by a too-long line were still counted against the
    # next command: a LOGIN with two literals after it was BAD "too many literals".
    for long_line in (b"x" * 2000 + b"\r\n", b"x" * 2000):
        c = core(tls_active=True, max_line=1024)
        c.receive_data(b"a LOGIN {5+}\r\nalice " + long_line)
        if not long_line.endswith(b"\n"):
            c.receive_data(b"\r\n")
        assert b"BAD" in c.data_to_send()
        c.receive_data(b"b LOGIN {1+}\r\nu {2+}\r\npw\r\n")
        assert c.next_event() == Authenticate("b", "u", "pw", "LOGIN")


def test_commands_without_arguments_refuse_arguments():
    """CAPABILITY, NOOP, LOGOUT and STARTTLS take no arguments (RFC 9051 §9 command-any,
    command-nonauth): with one they are BAD, and LOGOUT x neither says BYE nor closes."""
    c = core()
    c.receive_data(b"a CAPABILITY x\r\nb NOOP x\r\nd LOGOUT now\r\ne STARTTLS please\r\nf NOOP\r\n")
    out = c.data_to_send()
    assert out.startswith(b"a BAD ") and b"\r\nb BAD " in out and b"\r\nd BAD " in out
    assert b"\r\ne BAD " in out and out.endswith(b"f OK NOOP completed\r\n")
    assert b"BYE" not in out and c.next_event() is None


def test_id_arguments_are_nil_or_pairs():
    """RFC 2971 §4: ID takes NIL or a parenthesized list of field/value pairs; without an
    argument, or with a field and no value, it is BAD (the mail store answers the same)."""
    c = core()
    c.receive_data(b'a ID ("name")\r\nb ID\r\nd ID ("name" NIL "os" "iOS (21A329)")\r\ne ID ()\r\n')
    out = c.data_to_send()
    assert out.startswith(b"a BAD ") and b"\r\nb BAD " in out
    assert b"\r\nd OK ID completed" in out and out.endswith(b"e OK ID completed\r\n")


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_authenticate_login_prompts_for_the_user_name_then_the_password():
    """SASL LOGIN (draft-murchison-sasl-login, Outlook's and curl's AUTH=LOGIN): the prompts
    are base64 "Username:" and "Password:"; nothing is checked before both are in."""
    c = core(tls_active=True)
    c.receive_data(b"a AUTHENTICATE LOGIN\r\n")
    assert c.data_to_send() == b"+ VXNlcm5hbWU6\r\n" and c.next_event() is None
    c.receive_data(b64("alice@acme.example") + b"\r\n")
    assert c.data_to_send() == b"+ UGFzc3dvcmQ6\r\n" and c.next_event() is None
    c.receive_data(b64("pässwört") + b"\r\na2 NOOP\r\n")
    assert c.next_event() == Authenticate("a", "alice@acme.example", "pässwört", "AUTH=LOGIN")
    c.login_ok("OK [CAPABILITY IMAP4rev1] Logged in")
    assert c.data_to_send() == b"a OK [CAPABILITY IMAP4rev1] Logged in\r\n"
    assert c.leftover() == b"a2 NOOP\r\n"


def test_authenticate_login_with_sasl_ir_carries_the_user_name():
    c = core(tls_active=True)
    c.receive_data(b"a AUTHENTICATE login " + b64("alice@acme.example") + b"\r\n")
    assert c.data_to_send() == b"+ UGFzc3dvcmQ6\r\n" and c.next_event() is None
    c.receive_data(b64("secret") + b"\r\n")
    assert c.next_event() == Authenticate("a", "alice@acme.example", "secret", "AUTH=LOGIN")


def test_authenticate_login_cancel_and_bad_base64_are_bad_and_end_the_exchange():
    for step in (0, 1):
        for answer, text in ((b"*", b"AUTHENTICATE cancelled"), (b"!!not base64!!", b"Malformed LOGIN response")):
            c = core(tls_active=True)
            c.receive_data(b"t AUTHENTICATE LOGIN\r\n" + (b64("alice@acme.example") + b"\r\n") * step)
            c.data_to_send()
            c.receive_data(answer + b"\r\nn NOOP\r\n")
            assert c.data_to_send() == b"t BAD " + text + b"\r\nn OK NOOP completed\r\n", (step, answer)
            assert c.next_event() is None
    c = core(tls_active=True)
    c.receive_data(b"t AUTHENTICATE LOGIN =\r\n")               # an empty user name
    assert c.data_to_send() == b"t BAD Malformed LOGIN response\r\n" and c.next_event() is None


def test_authenticate_login_answers_an_unknown_user_as_a_wrong_password():
    """The password is asked for whatever the user name, and the shell's refusal (the same
    for both) is all the client hears: no account can be told from a missing one."""
    seen = []
    for user in ("alice@acme.example", "nobody@acme.example"):
        c = core(tls_active=True)
        c.receive_data(b"t AUTHENTICATE LOGIN\r\n" + b64(user) + b"\r\n")
        out = c.data_to_send()
        c.receive_data(b64("wrong") + b"\r\n")
        assert c.next_event() == Authenticate("t", user, "wrong", "AUTH=LOGIN")
        c.login_failed("AUTHENTICATIONFAILED", "Authentication failed")
        seen.append(out + c.data_to_send())
    assert seen[0] == seen[1] == (b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"
                                  b"t NO [AUTHENTICATIONFAILED] Authentication failed\r\n")


def test_authenticate_login_is_neither_offered_nor_taken_before_tls():
    c = core()
    c.receive_data(b"a CAPABILITY\r\n")
    out = c.data_to_send()
    assert b"AUTH=LOGIN" not in out and b"AUTH=PLAIN" not in out and b"LOGINDISABLED" in out
    c.receive_data(b"b AUTHENTICATE LOGIN\r\nc AUTHENTICATE LOGIN " + b64("alice@acme.example") + b"\r\n")
    assert c.data_to_send() == (b"b NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n"
                                b"c NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n")
    assert c.next_event() is None
    for kw in ({"tls_active": True}, {"allow_plaintext": True}):
        c = core(**kw)
        c.receive_data(b"a CAPABILITY\r\n")
        assert b" AUTH=PLAIN AUTH=LOGIN" in c.data_to_send()


def test_a_too_long_sasl_response_ends_the_exchange():
    for tail in (b"\r\n", b""):
        c = core(tls_active=True, max_line=1024)
        c.receive_data(b"t AUTHENTICATE LOGIN " + b64("alice@acme.example") + b"\r\n")
        c.data_to_send()
        c.receive_data(b"A" * 2000 + tail)
        c.receive_data(b"\r\nn NOOP\r\n" if not tail else b"n NOOP\r\n")
        assert c.data_to_send() == b"t BAD Line too long\r\nn OK NOOP completed\r\n"
        assert c.next_event() is None and len(c._in) == 0
