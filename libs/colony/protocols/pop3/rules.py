"""POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595), SASL PLAIN and LOGIN (RFC 5034,
RFC 4616, draft-murchison-sasl-login) and response codes (RFC 3206), as a sans-IO server core.

Theory of operation
-------------------
``Pop3Server`` is fed bytes (``receive_data``) and hands out what the shell must act on
(``next_event()``): ``Authenticate`` (check these credentials, then call ``login_ok`` with
the maildrop listing or ``login_failed``), ``StartTLS`` (upgrade, then call
``tls_started``), ``Retrieve`` (send message *n*, whole or its header plus *lines* body
lines, through ``send_message``), ``Commit`` (QUIT in the TRANSACTION state: delete what was
marked, then ``committed``), ``Close``.  Everything else -- STAT, LIST, UIDL, DELE, RSET,
NOOP, CAPA, the state rules -- the core answers itself from the listing, so the mail store
is asked only for what it must do.  Bytes to send accumulate in ``data_to_send()``.

States (RFC 1939 §3): AUTHORIZATION (USER/PASS, AUTH, STLS, CAPA, QUIT) -> TRANSACTION after
a successful login -> UPDATE on QUIT, where (and only where) deletions happen.  A connection
that drops in TRANSACTION deletes nothing.

Limits that keep memory bounded whatever a client sends: a command line is at most 255
octets (RFC 2449 §4); a longer one is refused with -ERR and skipped up to its end without
being buffered; a SASL response line is at most ``MAX_SASL`` octets; after ``max_errors``
bad commands the server says goodbye; answers are held up to ``MAX_OUTPUT`` octets (plus the
one being made): past that, pipelined commands wait in the input until ``data_to_send()``
takes the output, which lets the core go on with them -- so a shell loops over events and
``data_to_send()`` until both are empty before it reads again (without the bound, ``RETR 1``
pipelined a thousand times and never read held a thousand copies of the message).
``clock`` is injected: the idle timer (10 minutes,
RFC 1939 §3) is ``idle_deadline`` and the shell calls ``handle_timer(now)``.

Plaintext authentication before TLS is refused unless ``allow_plaintext`` (the edge allows it
only on its inner, already-encrypted hop or where an operator configured it).  AUTH LOGIN asks
for the user name and then the password (``+ `` with base64 ``Username:`` / ``Password:``;
an initial response is the user name); it asks for the password whatever the user name, so
the answers never tell whether an account exists.  ``*`` cancels an exchange with -ERR.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

MAX_LINE = 255
MAX_SASL = 4096
MAX_TOP_LINES = 2 ** 31     # a TOP line count past any message's body
MAX_OUTPUT = 64 * 1024     # octets of answers held before pipelined commands wait for the shell
SASL_MECHANISMS = ("PLAIN", "LOGIN")
_USERNAME_PROMPT, _PASSWORD_PROMPT = b"+ VXNlcm5hbWU6\r\n", b"+ UGFzc3dvcmQ6\r\n"    # base64 "Username:", "Password:"
IDLE_TIMEOUT = 600.0


class State(StrEnum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


@dataclass(frozen=True)
class MessageInfo:
    size: int          # octets as sent (CRLF line ends)
    uid: str           # unique-id: 1..70 characters 0x21..0x7E (RFC 1939 §7)


@dataclass(frozen=True)
class Authenticate:
    user: str
    password: str
    mechanism: str     # "USER", "PLAIN" or "LOGIN"
    authzid: str = ""


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Retrieve:
    number: int                 # 1-based message number
    top_lines: int | None = None


@dataclass(frozen=True)
class Commit:
    delete: tuple[int, ...]     # 1-based numbers marked for deletion


@dataclass(frozen=True)
class Close:
    reason: str


Event = Authenticate | StartTLS | Retrieve | Commit | Close


class Pop3Server:
    def __init__(self, clock: Callable[[], float], *, tls_available: bool, tls_active: bool = False,
                 allow_plaintext: bool = False, greeting: str = "Colony POP3 ready",
                 idle_timeout: float = IDLE_TIMEOUT, max_errors: int = 10) -> None:
        self.clock = clock
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.allow_plaintext = allow_plaintext
        self.idle_timeout = idle_timeout
        self.max_errors = max_errors
        self.state = State.AUTHORIZATION
        self._in = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._user: str | None = None
        self._messages: list[MessageInfo] = []
        self._deleted: set[int] = set()
        self._busy = False           # waiting for the shell (auth, retrieve, TLS, commit)
        self._discarding = False     # skipping the rest of an over-long line
        self._sasl_pending = False
        self._sasl_mechanism = "PLAIN"
        self._sasl_user: str | None = None    # AUTH LOGIN: the user name, once given
        self._errors = 0
        self.idle_deadline = clock() + idle_timeout
        self._reply(True, greeting)

    # --- I/O ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state == State.CLOSED:
            return
        self._in += data
        self.idle_deadline = self.clock() + self.idle_timeout
        self._process()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """The answers so far; commands held back by ``MAX_OUTPUT`` go on once they are
        taken (their events and answers are then waiting)."""
        out = bytes(self._out)
        self._out.clear()
        if out and self._in:
            self._process()
        return out

    def leftover(self) -> bytes:
        """Unread input (what a client pipelined after the command being served): the edge
        passes it on to the mail store after a login it handed over."""
        out = bytes(self._in)
        self._in.clear()
        return out

    def client_active(self) -> None:
        """The client took output since the shell last looked: a RETR that takes longer than
        the idle timeout to download is no inactivity (RFC 1939 §3's timer is an inactivity
        timer), so the timer starts again."""
        if self.state != State.CLOSED:
            self.idle_deadline = self.clock() + self.idle_timeout

    def handle_timer(self, now: float) -> None:
        """Past the idle deadline the session ends without a word and without UPDATE (RFC
        1939 §3: the server "should close the TCP connection without removing any messages
        or sending any response to the client" -- a client whose command crossed the timer
        would take an unasked-for -ERR as that command's answer)."""
        if self.state != State.CLOSED and now >= self.idle_deadline:
            self._close("idle timeout")

    # --- the shell's answers -----------------------------------------------------------------

    def login_ok(self, messages: Iterable[MessageInfo]) -> None:
        self._messages = list(messages)
        self.state = State.TRANSACTION
        self._busy = False
        self._reply(True, f"{self._user} has {len(self._messages)} message(s) ({sum(m.size for m in self._messages)} octets)")
        self._process()

    def handed_over(self, user: str, messages: Iterable[MessageInfo]) -> None:
        """A session the edge authenticated (``colony.contracts.handoff``): straight to
        TRANSACTION; the only output is the maildrop status line the edge relays."""
        self._out.clear()    # no greeting: the client had the edge's
        self._user = user
        self.login_ok(messages)

    def login_failed(self, code: str = "AUTH", text: str = "Authentication failed") -> None:
        """``code``: AUTH (bad credentials), IN-USE, LOGIN-DELAY or SYS/TEMP (RFC 3206)."""
        self._busy = False
        self._user = None
        self._reply(False, f"[{code}] {text}")
        self._count_error()
        self._process()

    def tls_started(self) -> None:
        self.tls_active = True
        self._busy = False
        self._process()

    def send_message(self, chunks: Iterable[bytes], top_lines: int | None = None) -> None:
        """Answer a ``Retrieve``: the message octets (any chunking), dot-stuffed here."""
        self._reply(True, "message follows")
        self._out += dot_stuff(chunks, top_lines)
        self._busy = False
        self._process()

    def retrieve_failed(self, text: str = "Message is gone", code: str | None = "SYS/TEMP") -> None:
        """``code`` None: the message itself is gone (another session deleted it), which no
        retry mends -- a plain -ERR, not [SYS/TEMP] (RFC 3206 §4: a temporary system problem)."""
        self._busy = False
        self._reply(False, f"[{code}] {text}" if code else text)
        self._process()

    def committed(self, ok: bool = True) -> None:
        self._busy = False
        if ok:
            self._reply(True, "Bye; deletions done")
        else:
            self._reply(False, "[SYS/TEMP] Some deleted messages were not removed")
        self._close("quit")

    def goodbye(self, text: str = "[SYS/TEMP] Server shutting down; nothing deleted") -> None:
        """The server ends the session (drain, owner change): no deletions."""
        if self.state != State.CLOSED:
            self._reply(False, text)
            self._close("server closing")

    # --- internals ---------------------------------------------------------------------------

    def _reply(self, ok: bool, text: str) -> None:
        self._out += (("+OK " if ok else "-ERR ") + text.replace("\r", " ").replace("\n", " ") + "\r\n").encode()

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._events.append(Close(reason))

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.max_errors and self.state != State.CLOSED:
            self._reply(False, "Too many errors; closing")
            self._close("too many errors")

    def _process(self) -> None:
        while not self._busy and self.state != State.CLOSED and len(self._out) < MAX_OUTPUT:
            end = self._in.find(b"\n")
            if self._discarding:
                if end < 0:
                    self._in.clear()
                    return
                del self._in[:end + 1]
                self._discarding = False
                continue
            limit = MAX_SASL if self._sasl_pending else MAX_LINE
            if end < 0:
                if len(self._in) > limit:
                    self._in.clear()
                    self._discarding = True
                    self._sasl_pending = False
                    self._reply(False, "Line too long")
                    self._count_error()
                return
            line = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[:end + 1]
            if end + 1 > limit:
                self._sasl_pending = False
                self._reply(False, "Line too long")
                self._count_error()
                continue
            if self._sasl_pending:
                self._sasl_response(line)
                continue
            self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(False, "Command is not UTF-8")
            self._count_error()
            return
        verb, _, arg = text.strip().partition(" ")
        verb = verb.upper()
        if verb == "PASS":
            # PASS has exactly one argument, so spaces in it are the password's own (RFC 1939
            # §7): a password that begins or ends with a space must reach the check as it is.
            arg = text.lstrip().partition(" ")[2]
        handler = getattr(self, f"_cmd_{self.state}_{verb}", None) or getattr(self, f"_cmd_any_{verb}", None)
        if handler is None:
            known = any(hasattr(self, f"_cmd_{s}_{verb}") for s in State)
            self._reply(False, f"{verb or 'Empty command'} not valid {'in this state' if known else 'here'}")
            self._count_error()
            return
        handler(arg if verb == "PASS" else arg.strip())

    # AUTHORIZATION ------------------------------------------------------------------------

    def _plaintext_refused(self) -> bool:
        if self.tls_active or self.allow_plaintext:
            return False
        self._reply(False, "[AUTH] Plaintext authentication needs TLS first: use STLS")
        self._count_error()
        return True

    def _cmd_authorization_USER(self, arg: str) -> None:
        if self._plaintext_refused():
            return
        if not arg:
            self._reply(False, "USER needs a name")
            self._count_error()
            return
        self._user = arg
        self._reply(True, "Send your password")

    def _cmd_authorization_PASS(self, arg: str) -> None:
        if self._user is None:
            self._reply(False, "USER first")
            self._count_error()
            return
        if self._plaintext_refused():
            return
        self._busy = True
        self._events.append(Authenticate(self._user, arg, "USER"))

    def _cmd_authorization_AUTH(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:
            self._reply(True, "")          # RFC 5034: list the mechanisms
            self._out += "".join(f"{m}\r\n" for m in SASL_MECHANISMS).encode() + b".\r\n"
            return
        if mechanism.upper() not in SASL_MECHANISMS:
            self._reply(False, "Unsupported mechanism")
            self._count_error()
            return
        if self._plaintext_refused():
            return
        self._sasl_mechanism, self._sasl_user = mechanism.upper(), None
        if initial:
            self._sasl_response(initial.encode())
        else:
            self._sasl_pending = True
            self._out += _USERNAME_PROMPT if self._sasl_mechanism == "LOGIN" else b"+ \r\n"

    def _sasl_response(self, line: bytes) -> None:
        self._sasl_pending = False
        user, self._sasl_user = self._sasl_user, None
        if line.strip() == b"*":
            self._reply(False, "Authentication cancelled")
            return
        if self._sasl_mechanism == "LOGIN":
            self._login_response(user, line.strip())
            return
        try:
            raw = base64.b64decode(line.strip(), validate=True) if line.strip() != b"=" else b""
            authzid, authcid, password = raw.split(b"\x00")
            user, pw, zid = authcid.decode("utf-8"), password.decode("utf-8"), authzid.decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            self._reply(False, "[AUTH] Malformed PLAIN response")
            self._count_error()
            return
        if not user:
            self._reply(False, "[AUTH] Malformed PLAIN response")
            self._count_error()
            return
        if zid and zid.lower() != user.lower():
            # RFC 4616 §2: acting as someone else needs that right, which nobody has here.
            self._reply(False, "[AUTH] Acting as another user is not allowed")
            self._count_error()
            return
        self._user = user
        self._busy = True
        self._events.append(Authenticate(user, pw, "PLAIN", zid))

    def _login_response(self, user: str | None, line: bytes) -> None:
        """One step of AUTH LOGIN: the user name (then the password is asked for), or the password."""
        try:
            value = (base64.b64decode(line, validate=True) if line != b"=" else b"").decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            self._reply(False, "[AUTH] Malformed LOGIN response")
            self._count_error()
            return
        if user is not None:
            self._user = user
            self._busy = True
            self._events.append(Authenticate(user, value, "LOGIN"))
        elif not value:
            self._reply(False, "[AUTH] Malformed LOGIN response")
            self._count_error()
        else:
            self._sasl_user = value
            self._sasl_pending = True
            self._out += _PASSWORD_PROMPT

    def _cmd_authorization_STLS(self, arg: str) -> None:
        if self.tls_active or not self.tls_available:
            self._reply(False, "TLS not available" if not self.tls_available else "Already in TLS")
            self._count_error()
            return
        self._reply(True, "Begin TLS negotiation")
        self._in.clear()   # nothing pipelined before the handshake may be acted on (RFC 2595 §4)
        self._busy = True
        self._events.append(StartTLS())

    def _cmd_any_CAPA(self, arg: str) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER", "LOGIN-DELAY 0",
                "IMPLEMENTATION Colony"]
        if self.state == State.AUTHORIZATION:
            if self.tls_available and not self.tls_active:
                caps.append("STLS")
            if self.tls_active or self.allow_plaintext:
                caps += ["USER", "SASL " + " ".join(SASL_MECHANISMS)]
        self._reply(True, "Capability list follows")
        self._out += ("\r\n".join(caps) + "\r\n.\r\n").encode()

    def _cmd_any_QUIT(self, arg: str) -> None:
        if self.state == State.TRANSACTION:
            self.state = State.UPDATE
            self._busy = True
            self._events.append(Commit(tuple(sorted(self._deleted))))
            return
        self._reply(True, "Bye")
        self._close("quit")

    def _cmd_any_NOOP(self, arg: str) -> None:
        if self.state != State.TRANSACTION:
            self._reply(False, "NOOP only after login")
            self._count_error()
            return
        self._reply(True, "")

    # TRANSACTION --------------------------------------------------------------------------

    def _number(self, arg: str) -> int | None:
        """A live message number from ``arg``, or None after answering -ERR."""
        if not _digits(arg) or len(arg) > 9:
            self._reply(False, "Need a message number")
            self._count_error()
            return None
        n = int(arg)
        if not 1 <= n <= len(self._messages):
            self._reply(False, f"No message {n}")
            return None
        if n in self._deleted:
            self._reply(False, f"Message {n} already deleted")
            return None
        return n

    def _cmd_transaction_STAT(self, arg: str) -> None:
        live = [m for i, m in enumerate(self._messages, 1) if i not in self._deleted]
        self._reply(True, f"{len(live)} {sum(m.size for m in live)}")

    def _listing(self, arg: str, field: Callable[[MessageInfo], str]) -> None:
        if arg:
            n = self._number(arg)
            if n is not None:
                self._reply(True, f"{n} {field(self._messages[n - 1])}")
            return
        self._reply(True, "listing follows")
        self._out += b"".join(f"{i} {field(m)}\r\n".encode() for i, m in enumerate(self._messages, 1)
                              if i not in self._deleted) + b".\r\n"

    def _cmd_transaction_LIST(self, arg: str) -> None:
        self._listing(arg, lambda m: str(m.size))

    def _cmd_transaction_UIDL(self, arg: str) -> None:
        self._listing(arg, lambda m: m.uid)

    def _cmd_transaction_RETR(self, arg: str) -> None:
        n = self._number(arg)
        if n is not None:
            self._busy = True
            self._events.append(Retrieve(n))

    def _cmd_transaction_TOP(self, arg: str) -> None:
        parts = arg.split()
        if len(parts) != 2 or not _digits(parts[1]):
            self._reply(False, "TOP needs a message number and a line count")
            self._count_error()
            return
        n = self._number(parts[0])
        if n is not None:
            self._busy = True
            # More lines than the body has is the whole message (RFC 1939 §7), however many.
            self._events.append(Retrieve(n, min(int(parts[1]), MAX_TOP_LINES)))

    def _cmd_transaction_DELE(self, arg: str) -> None:
        n = self._number(arg)
        if n is not None:
            self._deleted.add(n)
            self._reply(True, f"Message {n} deleted")

    def _cmd_transaction_RSET(self, arg: str) -> None:
        self._deleted.clear()
        self._reply(True, f"{len(self._messages)} message(s)")


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' or '①', which int() then refuses."""
    return text.isascii() and text.isdigit()


def dot_stuff(chunks: Iterable[bytes], top_lines: int | None = None) -> bytes:
    """Message octets as a POP3 multi-line response: lines starting with '.' get another
    '.', every line ends in CRLF, and a final '.' line ends it.  With ``top_lines`` only the
    header section and that many body lines are sent (TOP)."""
    out = bytearray()
    pending = b""
    in_body = False
    body_lines = 0
    done = False
    for chunk in chunks:
        if done:
            break
        data = pending + chunk
        lines = data.split(b"\n")
        pending = lines.pop()
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw   # only the line end's CR: "x\r\r\n" keeps one
            if in_body and top_lines is not None:
                if body_lines >= top_lines:
                    done = True
                    break
                body_lines += 1
            out += (b"." + line if line.startswith(b".") else line) + b"\r\n"
            if not in_body and line == b"":
                in_body = True
    if pending and not done and not (in_body and top_lines is not None and body_lines >= top_lines):
        # the last line, without a line end (or with only its CR): sent with the CRLF it lacks
        line = pending[:-1] if pending.endswith(b"\r") else pending
        out += (b"." + line if line.startswith(b".") else line) + b"\r\n"
    out += b".\r\n"
    return bytes(out)
