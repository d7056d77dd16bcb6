"""The POP3 core against a table of raw command sequences, each answer's status and response
code decided from the RFCs (1939 and errata, 2449, 2595, 3206, 5034).  The same table is
replayed against Debian's Dovecot (tests/integration/test_pop3_dovecot_replay.py), which is
where it came from: every row was run against both, and where the two differ the row says
which one the RFC supports (``dovecot``: what Dovecot answers instead, and why that is not
copied); and through an edge and a mail store process
(tests/integration/edge/test_pop3_edge_replay.py).

A row is a list of steps ``(sent, expected)``: ``sent`` is a command line (CRLF added) or raw
bytes (sent as they are, several commands pipelined in one write), ``expected`` the status
of each answer it gets: ``+OK``, ``-ERR``, ``-ERR [CODE]``, ``+`` (a SASL challenge).  Every
row ends in a state where the session must still be usable, or with QUIT (then the
connection must close)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

import pytest

from colony.protocols.pop3 import Authenticate, Close, Commit, MessageInfo, Pop3Server, Retrieve, StartTLS

PASSWORD = "pw"
USER = "{user}"       # each replayed row logs in as a user of its own (a fresh maildrop)

MAILDROP = [
    b"Subject: one\r\n\r\nbody one\r\n",
    # byte-stuffing (RFC 1939 §3): every line that starts with '.' gets another
    b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n",
    # no line end after the last line: it is sent with one, before the terminating '.'
    b"Subject: no final line end\r\n\r\nline 1\r\nlast line without a line end",
    # TOP's header-plus-n-lines
    b"Subject: ten\r\nX-A: b\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(1, 11)),
    # a CR that is not part of a line end is the message's own octet (LIST counts it)
    b"Subject: cr\r\n\r\nx\r\r\nbare\rcr\r\n.\r\r\nend\r\n",
]
TOTAL = sum(len(m) for m in MAILDROP)


def plain(authzid: str, user: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


# SASL PLAIN responses, made for the row's user when sent
PLAIN = "{plain}"                    # the right password
PLAIN_WRONG = "{plain-wrong}"        # a wrong one
PLAIN_AS_OTHER = "{plain-other}"     # the right one, acting as another user
PLAIN_TWO_FIELDS = "{plain-two}"     # authcid NUL passwd: no authzid field


LOGIN = [(f"USER {USER}", "+OK"), (f"PASS {PASSWORD}", "+OK")]


@dataclass(frozen=True)
class Row:
    name: str
    steps: list[tuple[str | bytes, str | tuple[str, ...]]]
    why: str
    dovecot: dict[int, str | tuple[str, ...]] = field(default_factory=dict)  # step -> Dovecot's answer, where it differs
    closes: bool = False        # the last step ends the session


ROWS = [
    # --- AUTHORIZATION (RFC 1939 §4, §7) -----------------------------------------------------
    Row("transaction commands before login", [("STAT", "-ERR"), ("RETR 1", "-ERR"), ("CAPA", "+OK")],
        "RFC 1939 §4: only USER/PASS (APOP), QUIT -- and CAPA, AUTH, STLS -- in AUTHORIZATION"),
    Row("NOOP and RSET before login", [("NOOP", "-ERR"), ("RSET", "-ERR"), ("CAPA", "+OK")],
        "RFC 1939 §5: NOOP and RSET are TRANSACTION-state commands"),
    Row("PASS without USER", [(f"PASS {PASSWORD}", "-ERR"), *LOGIN, ("STAT", "+OK")],
        "RFC 1939 §7: PASS follows a successful USER"),
    Row("USER without a name", [("USER", "-ERR"), *LOGIN, ("STAT", "+OK")],
        "RFC 1939 §7: USER's name is required",
        dovecot={0: "+OK"}),     # Dovecot takes an empty name and fails the PASS after it
    Row("wrong password, then USER and PASS again", [
        (f"USER {USER}", "+OK"), ("PASS wrong", "-ERR [AUTH]"), (f"PASS {PASSWORD}", "-ERR"),
        *LOGIN, ("STAT", "+OK")],
        "RFC 1939 §7: after PASS -ERR the client starts over with a new authentication command"),
    Row("a second USER replaces the first", [("USER nobody@nowhere.example", "+OK"), *LOGIN, ("STAT", "+OK")],
        "RFC 1939 §7: USER then names the maildrop PASS opens"),
    Row("spaces in a password are the password's", [(f"USER {USER}", "+OK"), (f"PASS  {PASSWORD}", "-ERR [AUTH]"),
                                                     *LOGIN, ("STAT", "+OK")],
        "RFC 1939 §7: PASS has one argument, so spaces in it are part of the password: ' pw' is not 'pw'"),
    Row("commands are case-insensitive", [(f"user {USER}", "+OK"), (f"pass {PASSWORD}", "+OK"), ("stat", "+OK"),
                                          ("list 1", "+OK"), ("uidl 1", "+OK"), ("top 1 0", "+OK"), ("noop", "+OK")],
        "RFC 1939 §3: keywords are case-insensitive"),
    Row("APOP and unknown commands", [("APOP a b", "-ERR"), ("XYZZY", "-ERR"), ("CAPA", "+OK")],
        "RFC 1939 §7: APOP is optional (not in CAPA); an unknown command gets -ERR"),
    Row("STLS where TLS is not offered", [("STLS", "-ERR"), ("CAPA", "+OK")],
        "RFC 2595 §4: STLS only where CAPA says STLS"),
    Row("QUIT in AUTHORIZATION", [("QUIT", "+OK")], "RFC 1939 §4: +OK and close, no UPDATE", closes=True),

    # --- SASL (RFC 5034) ---------------------------------------------------------------------
    Row("AUTH PLAIN with an initial response", [(f"AUTH PLAIN {PLAIN}", "+OK"), ("STAT", "+OK")],
        "RFC 5034 §4: the initial response on the command line"),
    Row("AUTH PLAIN after an empty challenge", [("AUTH PLAIN", "+"), (PLAIN, "+OK"),
                                                 ("STAT", "+OK")],
        "RFC 5034 §4: '+ ' challenge, base64 response"),
    Row("the mechanism name is case-insensitive", [(f"AUTH plain {PLAIN}", "+OK")],
        "RFC 5034 §4 / RFC 4422 §3.1: mechanism names are case-insensitive"),
    Row("AUTH cancelled with '*', then USER/PASS", [("AUTH PLAIN", "+"), ("*", "-ERR"), *LOGIN, ("STAT", "+OK")],
        "RFC 5034 §4: '*' cancels with -ERR; the session goes on in AUTHORIZATION"),
    Row("AUTH response that is not base64", [("AUTH PLAIN", "+"), ("!!!", "-ERR [AUTH]"), *LOGIN, ("STAT", "+OK")],
        "RFC 5034 §4: a response the server cannot base64-decode rejects the AUTH command (both servers "
        "say [AUTH], RFC 3206 §4: the credentials sent are the problem)"),
    Row("AUTH initial response that is not base64", [("AUTH PLAIN !!!", "-ERR [AUTH]"), ("CAPA", "+OK")],
        "RFC 5034 §4"),
    Row("AUTH with an empty initial response ('=')", [("AUTH PLAIN =", "-ERR [AUTH]"), ("CAPA", "+OK")],
        "RFC 5034 §4: '=' is a zero-length response, which PLAIN cannot be"),
    Row("USER/PASS after a failed AUTH", [(f"AUTH PLAIN {PLAIN_WRONG}", "-ERR [AUTH]"), *LOGIN,
                                          ("STAT", "+OK")],
        "RFC 5034 §4 / RFC 2449 §8.1.3 (AUTH-RESP-CODE): a failed AUTH leaves AUTHORIZATION usable"),
    Row("PLAIN with two fields", [(f"AUTH PLAIN {PLAIN_TWO_FIELDS}", "-ERR [AUTH]"),
                                  ("CAPA", "+OK")],
        "RFC 4616 §2: authzid NUL authcid NUL passwd"),
    Row("PLAIN acting as another user", [(f"AUTH PLAIN {PLAIN_AS_OTHER}", "-ERR [AUTH]"),
                                         ("CAPA", "+OK")],
        "RFC 4616 §2: an authzid other than the user needs a right nobody has here"),
    Row("AUTH with a mechanism not offered", [("AUTH CRAM-MD5", "-ERR"), ("CAPA", "+OK")],
        "RFC 5034 §4: a plain -ERR; [AUTH] (RFC 3206) is about the credentials, which were never sent",
        dovecot={0: "-ERR [AUTH]"}),
    Row("AUTH after USER", [(f"USER {USER}", "+OK"), (f"AUTH PLAIN {PLAIN}", "+OK"),
                            ("STAT", "+OK")],
        "RFC 1939 §7: a new authentication command may follow USER"),
    Row("AUTH, USER, PASS, STLS in TRANSACTION", [*LOGIN, (f"AUTH PLAIN {PLAIN}", "-ERR"),
                                                  (f"USER {USER}", "-ERR"), ("PASS x", "-ERR"), ("STLS", "-ERR"),
                                                  ("NOOP", "+OK")],
        "RFC 1939 §5, RFC 2595 §4, RFC 5034 §4: authentication commands only in AUTHORIZATION"),

    # --- TRANSACTION (RFC 1939 §5) -----------------------------------------------------------
    Row("STAT, LIST and UIDL", [*LOGIN, ("STAT", "+OK"), ("LIST", "+OK"), ("LIST 5", "+OK"), ("UIDL", "+OK"),
                                ("UIDL 5", "+OK")], "RFC 1939 §5, §7"),
    Row("message numbers out of range", [*LOGIN, ("LIST 0", "-ERR"), ("LIST 6", "-ERR"), ("RETR 0", "-ERR"),
                                         ("UIDL 6", "-ERR"), ("DELE 0", "-ERR"), ("TOP 6 1", "-ERR"), ("NOOP", "+OK")],
        "RFC 1939 §5: numbers run from 1 to the count; others get -ERR and the session goes on"),
    Row("arguments that are no message numbers", [*LOGIN, ("LIST -1", "-ERR"), ("LIST abc", "-ERR"),
                                                  ("RETR 1 2", "-ERR"), ("DELE x", "-ERR"), ("RETR", "-ERR"),
                                                  ("LIST 99999999999999999999", "-ERR"), ("STAT", "+OK")],
        "RFC 1939 §3, §7"),
    Row("a leading zero is the same number", [*LOGIN, ("LIST 01", "+OK"), ("RETR 01", "+OK")],
        "RFC 1939 §7: a message-number is a number"),
    Row("arguments where none belong are ignored", [*LOGIN, ("STAT 1", "+OK"), ("NOOP x", "+OK"),
                                                    ("RSET x", "+OK")],
        "RFC 1939 §3 (robustness): both servers ignore them"),
    Row("RETR of every message", [*LOGIN] + [(f"RETR {n}", "+OK") for n in range(1, 6)], "RFC 1939 §7"),
    Row("TOP", [*LOGIN, ("TOP 4 0", "+OK"), ("TOP 4 2", "+OK"), ("TOP 4 100", "+OK"), ("TOP 3 0", "+OK"),
                ("TOP 3 5", "+OK")],
        "RFC 1939 §7: header, blank line, n body lines; more than the body has is the whole message"),
    Row("TOP with a huge line count", [*LOGIN, ("TOP 1 99999999999999999999", "+OK"), ("NOOP", "+OK")],
        "RFC 1939 §7: more lines than the body has sends the entire message, however many",
        dovecot={2: "-ERR"}),
    Row("TOP without its arguments", [*LOGIN, ("TOP", "-ERR"), ("TOP 1", "-ERR"), ("TOP 1 -1", "-ERR"),
                                      ("TOP 1 x", "-ERR"), ("NOOP", "+OK")],
        "RFC 1939 §7: both arguments are required, n non-negative"),
    Row("a message marked deleted is gone until RSET", [
        *LOGIN, ("DELE 1", "+OK"), ("DELE 1", "-ERR"), ("RETR 1", "-ERR"), ("TOP 1 0", "-ERR"), ("LIST 1", "-ERR"),
        ("UIDL 1", "-ERR"), ("LIST", "+OK"), ("STAT", "+OK"), ("RSET", "+OK"), ("LIST 1", "+OK"), ("RETR 1", "+OK")],
        "RFC 1939 §5, §7: a deleted message may not be referred to; RSET unmarks"),
    Row("QUIT in TRANSACTION enters UPDATE", [*LOGIN, ("DELE 2", "+OK"), ("QUIT", "+OK")],
        "RFC 1939 §6: the deletions happen at QUIT, +OK when they did", closes=True),
    Row("LANG and UTF8 are not offered", [*LOGIN, ("UTF8", "-ERR"), ("LANG", "-ERR"), ("NOOP", "+OK")],
        "RFC 6856: neither is in CAPA, so both are unknown commands"),
    Row("LAST is gone", [*LOGIN, ("LAST", "-ERR"), ("NOOP", "+OK")], "RFC 1939 dropped RFC 1460's LAST"),

    # --- framing (RFC 2449 §4, §6.6) --------------------------------------------------------
    Row("pipelined commands in one write", [(f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nDELE 1\r\nSTAT\r\n"
                                             "RSET\r\nNOOP\r\n".encode(), ("+OK",) * 8)],
        "RFC 2449 §6.6: PIPELINING is in CAPA; answers in order"),
    Row("pipelined AUTH and its response", [(f"AUTH PLAIN\r\n{PLAIN}\r\nSTAT\r\n".encode(),
                                             ("+", "+OK", "+OK"))],
        "RFC 2449 §6.6, RFC 5034 §4"),
    Row("a 255-octet command line", [(b"USER " + b"a" * 248 + b"\r\n", "+OK"), ("CAPA", "+OK")],
        "RFC 2449 §4: a command line is up to 255 octets, CRLF included"),
    Row("a 256-octet command line", [(b"USER " + b"a" * 249 + b"\r\n", "-ERR"), ("CAPA", "+OK")],
        "RFC 2449 §4: clients must not send longer lines; refusing one is the server's right",
        dovecot={0: "+OK"}),
    Row("an over-long line in TRANSACTION", [*LOGIN, (b"LIST " + b"1" * 300 + b"\r\n", "-ERR"), ("STAT", "+OK")],
        "RFC 2449 §4"),
    Row("bare LF line ends", [(f"USER {USER}\n".encode(), "+OK"), (f"PASS {PASSWORD}\n".encode(), "+OK"),
                              (b"STAT\n", "+OK")],
        "RFC 1939 §3 asks for CRLF; both servers also take LF"),
    Row("a NUL in a command", [(b"US\x00ER x\r\n", "-ERR"), ("CAPA", "+OK")], "RFC 1939 §3: not a keyword"),
]


# --- the core, driven as a shell drives it ---------------------------------------------------

class Session:
    """The core with a fake maildrop and auth: ``send`` returns the octets answered."""

    def __init__(self, user: str = "alice@acme.example", maildrop: list[bytes] = MAILDROP) -> None:
        self.user, self.maildrop = user, maildrop
        self.core = Pop3Server(lambda: 0.0, tls_available=False, allow_plaintext=True)
        self.greeting = self.core.data_to_send()
        self.commits: list[tuple[int, ...]] = []
        self.closed = False

    def send(self, data: bytes) -> bytes:
        self.core.receive_data(data)
        out = b""
        while True:
            out += self.core.data_to_send()
            event = self.core.next_event()
            if event is None:
                more = self.core.data_to_send()
                if not more:
                    return out
                out += more
            elif isinstance(event, Authenticate):
                if event.password == PASSWORD and event.user == self.user:
                    self.core.login_ok([MessageInfo(len(m), f"7-{n}") for n, m in enumerate(self.maildrop, 1)])
                else:
                    self.core.login_failed()
            elif isinstance(event, Retrieve):
                self.core.send_message([self.maildrop[event.number - 1]], event.top_lines)
            elif isinstance(event, Commit):
                self.commits.append(event.delete)
                self.core.committed()
            elif isinstance(event, StartTLS):
                raise AssertionError("no TLS here")
            elif isinstance(event, Close):
                self.closed = True


MULTILINE_ALWAYS = {"CAPA", "RETR", "TOP"}
MULTILINE_BARE = {"LIST", "UIDL", "AUTH"}     # multi-line without an argument


def raw(sent: str | bytes, user: str) -> bytes:
    """What a step sends for ``user``: its placeholders filled, CRLF after a command line."""
    text = sent.decode("latin-1") if isinstance(sent, bytes) else sent + "\r\n"
    for token, value in ((PLAIN, plain("", user, PASSWORD)), (PLAIN_WRONG, plain("", user, "nope")),
                         (PLAIN_AS_OTHER, plain("other@acme.example", user, PASSWORD)),
                         (PLAIN_TWO_FIELDS, base64.b64encode(f"{user}\0{PASSWORD}".encode()).decode()),
                         (USER, user)):
        text = text.replace(token, value)
    return text.encode("latin-1")


def split_answers(data: bytes, lines: list[bytes]) -> list[bytes]:
    """``data`` cut into the answers to ``lines`` (the command or SASL lines sent)."""
    answers = []
    for line in lines:
        end = data.find(b"\r\n")
        if end < 0:
            break
        first = data[:end + 2]
        words = line.split()
        verb = words[0].upper().decode("ascii", "replace") if words else ""
        if first.startswith(b"+OK") and (verb in MULTILINE_ALWAYS or (verb in MULTILINE_BARE and len(words) == 1)):
            stop = data.find(b"\r\n.\r\n", end)
            first = data[:stop + 5] if stop >= 0 else data
        answers.append(first)
        data = data[len(first):]
    return answers


def status(answer: bytes) -> str:
    m = re.match(rb"(\+OK|-ERR|\+)(?: (\[[^\]]*\]))?", answer)
    if not m:
        return repr(answer[:30])
    return m.group(1).decode() + (f" {m.group(2).decode()}" if m.group(1) == b"-ERR" and m.group(2) else "")


def lines_of(data: bytes) -> list[bytes]:
    return [line.rstrip(b"\r") for line in data.split(b"\n")[:-1]]


def expected_of(expected: str | tuple[str, ...]) -> tuple[str, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_each_answer_is_the_one_the_rfc_gives(row: Row):
    session = Session()
    for i, (sent, expected) in enumerate(row.steps):
        data = raw(sent, session.user)
        answers = split_answers(session.send(data), lines_of(data))
        assert [status(a) for a in answers] == list(expected_of(expected)), (i, sent, answers, row.why)
    assert session.closed == row.closes, row.why
    if not row.closes:      # still usable
        assert session.send(b"CAPA\r\n").startswith(b"+OK"), row.why


def unstuffed(answer: bytes) -> bytes:
    """The message octets of a RETR/TOP answer: status line, byte-stuffing and end taken off."""
    assert answer.endswith(b"\r\n.\r\n")
    body = answer.split(b"\r\n", 1)[1][:-3]
    return b"".join(line[1:] if line.startswith(b".") else line for line in body.splitlines(keepends=True)) \
        if body else b""


def test_retr_sends_what_list_and_stat_count():
    """RFC 1939 §5/§7: LIST's size is the message's exact octet count, and STAT sums them;
    RETR sends those octets (byte-stuffed).  A last line without its line end gets one, which
    both Colony and Dovecot leave out of the count (the CRLF that lets '.' stand on a line of
    its own, RFC 1939 §3).  A CR that ends no line is the message's own octet: it is sent."""
    session = Session()
    session.send(b"USER alice@acme.example\r\nPASS pw\r\n")
    assert session.send(b"STAT\r\n") == f"+OK {len(MAILDROP)} {TOTAL}\r\n".encode()
    listing = lines_of(split_answers(session.send(b"LIST\r\n"), [b"LIST"])[0])[1:-1]
    for n, message in enumerate(MAILDROP, 1):
        assert listing[n - 1] == f"{n} {len(message)}".encode()
        sent = unstuffed(session.send(f"RETR {n}\r\n".encode()))
        assert sent == (message if message.endswith(b"\r\n") else message + b"\r\n"), n
    answer = session.send(b"RETR 2\r\n")
    assert b"\r\n..leading dot\r\n...two\r\n..\r\nend\r\n.\r\n" in answer       # byte-stuffed
    assert session.send(b"RETR 5\r\n").endswith(b"\r\n\r\nx\r\r\nbare\rcr\r\n..\r\r\nend\r\n.\r\n")


def test_top_sends_the_header_and_n_body_lines():
    session = Session()
    session.send(b"USER alice@acme.example\r\nPASS pw\r\n")
    header = b"Subject: ten\r\nX-A: b\r\n\r\n"
    assert unstuffed(session.send(b"TOP 4 0\r\n")) == header
    assert unstuffed(session.send(b"TOP 4 2\r\n")) == header + b"line 1\r\nline 2\r\n"
    assert unstuffed(session.send(b"TOP 4 100\r\n")) == MAILDROP[3]
    assert unstuffed(session.send(b"TOP 3 0\r\n")) == b"Subject: no final line end\r\n\r\n"
    assert unstuffed(session.send(b"TOP 3 5\r\n")) == MAILDROP[2] + b"\r\n"
    assert unstuffed(session.send(b"TOP 2 1\r\n")) == b"Subject: dots\r\n\r\n.leading dot\r\n"


def test_uidl_names_each_message_once_and_deleted_ones_drop_out():
    session = Session()
    session.send(b"USER alice@acme.example\r\nPASS pw\r\n")
    uids = lines_of(split_answers(session.send(b"UIDL\r\n"), [b"UIDL"])[0])[1:-1]
    assert len({u.split()[1] for u in uids}) == len(MAILDROP)
    assert session.send(b"UIDL 3\r\n") == b"+OK " + uids[2] + b"\r\n"
    session.send(b"DELE 3\r\n")
    assert lines_of(split_answers(session.send(b"UIDL\r\n"), [b"UIDL"])[0])[1:-1] == uids[:2] + uids[3:]


def test_deletions_happen_only_at_quit_in_transaction():
    session = Session()
    session.send(b"USER alice@acme.example\r\nPASS pw\r\nDELE 2\r\nDELE 4\r\nRSET\r\nDELE 1\r\nDELE 3\r\n")
    assert session.commits == []
    assert session.send(b"QUIT\r\n") == b"+OK Bye; deletions done\r\n"
    assert session.commits == [(1, 3)] and session.closed
    quitter = Session()
    assert quitter.send(b"QUIT\r\n").startswith(b"+OK") and quitter.closed and quitter.commits == []


def test_a_password_keeps_its_spaces():
    """RFC 1939 §7: "a POP3 server may treat spaces in the argument as part of the password,
    instead of as argument separators" -- and must, for the password to be checked as set:
    Colony's passwords may begin or end with a space (the admin API keeps them as given)."""
    for line, password in ((b"PASS  two words \r\n", " two words "), (b"PASS pw\r\n", "pw"), (b"PASS\r\n", ""),
                           (b"pass a b\r\n", "a b")):
        core = Pop3Server(lambda: 0.0, tls_available=False, allow_plaintext=True)
        core.receive_data(b"USER alice@acme.example\r\n" + line)
        assert core.next_event() == Authenticate("alice@acme.example", password, "USER"), line


def test_the_idle_timer_closes_without_a_word():
    """RFC 1939 §3: when the autologout timer (at least 10 minutes) expires, the session does
    not enter UPDATE and the server closes "without removing any messages or sending any
    response to the client"."""
    now = [0.0]
    core = Pop3Server(lambda: now[0], tls_available=False, allow_plaintext=True)
    core.handed_over("alice@acme.example", [MessageInfo(10, "7-1")])
    core.data_to_send()
    core.receive_data(b"DELE 1\r\n")
    assert core.data_to_send().startswith(b"+OK")
    assert core.idle_deadline >= 600
    now[0] = 599.0
    core.handle_timer(now[0])
    assert core.next_event() is None
    now[0] = 600.0
    core.handle_timer(now[0])
    assert core.data_to_send() == b"" and core.next_event() == Close("idle timeout") and core.next_event() is None


def test_the_idle_timer_restarts_when_the_client_takes_output():
    """The timer measures inactivity (RFC 1939 §3): the shell says when the client took
    octets of a long answer (``client_active``), and the timer runs from then."""
    now = [0.0]
    core = Pop3Server(lambda: now[0], tls_available=False, allow_plaintext=True)
    core.handed_over("alice@acme.example", [MessageInfo(10, "7-1")])
    now[0] = 500.0
    core.client_active()
    now[0] = 1000.0
    core.handle_timer(now[0])
    assert core.next_event() is None and core.state != "closed"
    now[0] = 1100.0
    core.handle_timer(now[0])
    assert core.next_event() == Close("idle timeout")
