"""IMAP up to login (RFC 9051/3501 NOT AUTHENTICATED state), as the edge speaks it: a sans-IO core.

Theory of operation
-------------------
The edge answers everything a client may say before it is authenticated and hands the
rest to the mail store: ``ImapPreauth`` is fed bytes (``receive_data``) and hands out what
the shell must act on (``next_event()``): ``StartTLS`` (upgrade, then ``tls_started()``),
``Authenticate`` (check these credentials; then ``login_ok(store_line)`` with the store's
``OK [CAPABILITY ...] ...`` line, or ``login_failed(code, text)``) and ``Close``.  It answers
CAPABILITY, NOOP, ID, LOGOUT and every other command (``BAD``: not before login) itself.
After ``login_ok`` the core is done: ``leftover()`` returns what the client pipelined after
its login, for the shell to pass on to the store.

Arguments are atoms, quoted strings or literals (``{n}`` with a ``+`` continuation, or
``{n+}``/LITERAL+ without).  Memory is bounded whatever a client sends: a line is at most
``max_line`` octets and so is a literal; a longer line is answered ``BAD`` and skipped to
its end unbuffered; a larger literal is refused (synchronizing: never sent; non-synchronizing:
its octets are counted off and dropped).  A command has at most ``MAX_LITERALS`` literals
(LOGIN's user and password): each literal continues the command with another line, so
without that bound a client could grow one command without end, ``max_line`` at a time.  The
tag and the command name come before any literal (a literal's octets, CRLF included, must
never be echoed back as a tag).  After ``max_errors`` bad commands, ``* BYE``.

LOGIN and AUTHENTICATE PLAIN / LOGIN (with SASL-IR, RFC 4959) are refused before TLS unless
``allow_plaintext`` (``LOGINDISABLED`` is then advertised, RFC 9051 §6.2.3).  The SASL LOGIN
mechanism (draft-murchison-sasl-login, what Outlook and many printers use) asks for the user
name and then the password with the base64 prompts ``Username:`` and ``Password:``; an initial
response (SASL-IR) is the user name.  It asks for the password whatever the user name, so
the answers never tell whether an account exists.  ``*`` cancels an exchange (``BAD``, RFC
9051 §6.2.2), and so does a response line longer than ``max_line``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass

MAX_LINE = 8192
MAX_LITERALS = 2     # per command: LOGIN {user} {password} is the most any command here needs
_LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}$")
_TAG = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\+]+')     # RFC 9051 tag (fullmatch)
# Not allowed in an unquoted argument.  ']' is: LOGIN takes astrings, whose ASTRING-CHAR
# includes resp-specials (RFC 9051 §9), so 'LOGIN alice pa]ss' is a valid command.
_ATOM_SPECIALS = set('(){ %*"\\')
_SASL_MECHANISMS = ("PLAIN", "LOGIN")
_USERNAME_PROMPT, _PASSWORD_PROMPT = b"+ VXNlcm5hbWU6\r\n", b"+ UGFzc3dvcmQ6\r\n"    # base64 "Username:", "Password:"


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Authenticate:
    tag: str
    user: str
    password: str
    mechanism: str      # "LOGIN" (the command), or the SASL mechanism: "PLAIN" or "AUTH=LOGIN"
    authzid: str = ""


@dataclass(frozen=True)
class Close:
    reason: str


Event = StartTLS | Authenticate | Close


class _Bad(Exception):
    pass


class ImapPreauth:
    def __init__(self, *, tls_available: bool, tls_active: bool = False, allow_plaintext: bool = False,
                 greeting: str = "Colony IMAP ready", max_line: int = MAX_LINE, max_errors: int = 10) -> None:
        self.tls_available, self.tls_active, self.allow_plaintext = tls_available, tls_active, allow_plaintext
        self.max_line, self.max_errors = max_line, max_errors
        self._in = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._parts: list[str] = []        # tokens of the command read so far (literals included)
        self._literals = 0                 # literals in the command read so far
        self._literal: tuple[int, bool] | None = None   # (octets still to read, keep them?)
        self._literal_buf = bytearray()
        self._discarding = False
        self._sasl_tag: str | None = None  # AUTHENTICATE waiting for its response line
        self._sasl_mechanism = "PLAIN"
        self._sasl_user: str | None = None  # AUTHENTICATE LOGIN: the user name, once given
        self._busy = False
        self._done = False
        self._errors = 0
        self._out += f"* OK [CAPABILITY {self.capabilities()}] {greeting}\r\n".encode()

    # --- I/O -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._done:
            return
        self._in += data
        self._process()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def leftover(self) -> bytes:
        """What the client sent after its successful login (pipelined commands)."""
        out = bytes(self._in)
        self._in.clear()
        return out

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "ID", "LITERAL+", "ENABLE", "IDLE"]
        if self.tls_available and not self.tls_active:
            caps.append("STARTTLS")
        if self.tls_active or self.allow_plaintext:
            caps += [f"AUTH={m}" for m in _SASL_MECHANISMS]
        else:
            caps.append("LOGINDISABLED")
        return " ".join(caps)

    # --- the shell's answers ----------------------------------------------------------------------

    def tls_started(self) -> None:
        self.tls_active = True
        self._busy = False
        self._process()

    def login_ok(self, store_line: str, tag: str | None = None) -> None:
        """``store_line``: the store's ``OK [CAPABILITY ...] text``; sent with the login's tag."""
        self._busy = False
        self._done = True
        line = store_line if store_line.startswith("OK") else "OK Logged in"
        self._out += f"{self._login_tag} {_clean(line)}\r\n".encode()

    def login_failed(self, code: str, text: str) -> None:
        self._busy = False
        self._out += f"{self._login_tag} NO [{code}] {_clean(text)}\r\n".encode()
        self._count_error()
        self._process()

    # --- internals ----------------------------------------------------------------------------------

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.max_errors and not self._done:
            self._out += b"* BYE Too many errors\r\n"
            self._close("too many errors")

    def _close(self, reason: str) -> None:
        self._done = True
        self._events.append(Close(reason))

    def _bad(self, tag: str, text: str) -> None:
        self._out += f"{tag} BAD {text}\r\n".encode()
        self._count_error()

    def _process(self) -> None:
        while not self._busy and not self._done:
            if self._literal is not None:
                remaining, keep = self._literal
                take = min(remaining, len(self._in))
                if keep:
                    self._literal_buf += self._in[:take]
                del self._in[:take]
                remaining -= take
                if remaining:
                    self._literal = (remaining, keep)
                    return
                self._literal = None
                if keep:
                    self._parts.append(bytes(self._literal_buf).decode("utf-8", "replace"))
                    self._literal_buf.clear()
                continue
            end = self._in.find(b"\n")
            if self._discarding:
                if end < 0:
                    self._in.clear()
                    return
                del self._in[:end + 1]
                self._discarding = False
                continue
            if end < 0:
                if len(self._in) > self.max_line:
                    self._in.clear()
                    self._parts.clear()
                    self._literals = 0      # the command is dropped: its literals with it
                    self._discarding = True
                    self._bad(self._end_sasl() or "*", "Line too long")
                return
            line = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[:end + 1]
            if end + 1 > self.max_line:
                self._parts.clear()
                self._literals = 0
                self._bad(self._end_sasl() or "*", "Line too long")
                continue
            if self._sasl_tag is not None:
                self._sasl_response(line)
                continue
            self._line(line)

    def _line(self, line: bytes) -> None:
        literal = _LITERAL.search(line)
        head = line[:literal.start()] if literal else line
        try:
            self._parts += _tokens(head.decode("utf-8"), first=not self._parts, prior=self._parts)
            if literal and len(self._parts) < 2:
                raise _Bad("a tag and a command name come before a literal")
            if literal and self._literals >= MAX_LITERALS:
                raise _Bad("too many literals in one command")
        except (UnicodeDecodeError, _Bad) as exc:
            tag = self._parts[0] if self._parts else _first_word(line)
            self._parts.clear()
            self._literals = 0
            self._bad(tag, f"Bad syntax: {exc or 'not UTF-8'}")
            if literal and literal.group(2):      # non-synchronizing: its octets follow anyway
                self._literal = (int(literal.group(1)), False)
            return
        if literal:
            size, plus = int(literal.group(1)), bool(literal.group(2))
            if size > self.max_line:
                tag = self._parts[0] if self._parts else "*"
                self._parts.clear()
                self._literals = 0
                self._bad(tag, "Literal too large before login")
                if plus:
                    self._literal = (size, False)
                return
            self._literals += 1
            self._literal = (size, True)
            if not plus:
                self._out += b"+ Ready for literal\r\n"
            return
        parts, self._parts = self._parts, []
        self._literals = 0
        if parts:
            self._command(parts)

    def _command(self, parts: list[str]) -> None:
        tag = parts[0]
        if not _TAG.fullmatch(tag) or len(tag) > 64:
            self._bad("*", "Bad tag")
            return
        if len(parts) < 2:
            self._bad(tag, "Missing command")
            return
        verb, args = parts[1].upper(), parts[2:]
        if verb in ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS") and args:
            self._bad(tag, f"{verb} takes no arguments")     # RFC 9051 §9 command-any, -nonauth
            return
        if verb == "CAPABILITY":
            self._out += f"* CAPABILITY {self.capabilities()}\r\n{tag} OK CAPABILITY completed\r\n".encode()
        elif verb == "NOOP":
            self._out += f"{tag} OK NOOP completed\r\n".encode()
        elif verb == "ID":
            # RFC 2971 §4: NIL or "(" pairs of string SP nstring ")"; what they say is not used.
            if not (len(args) == 1 and args[0].upper() == "NIL"
                    or len(args) >= 2 and args[0] == "(" and args[-1] == ")" and len(args) % 2 == 0):
                self._bad(tag, "ID takes NIL or a list of field and value pairs")
                return
            self._out += f'* ID ("name" "Colony")\r\n{tag} OK ID completed\r\n'.encode()
        elif verb == "LOGOUT":
            self._out += f"* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n".encode()
            self._close("logout")
        elif verb == "STARTTLS":
            if self.tls_active or not self.tls_available:
                self._bad(tag, "TLS is not available" if not self.tls_available else "TLS is already active")
                return
            self._out += f"{tag} OK Begin TLS negotiation now\r\n".encode()
            self._in.clear()   # nothing pipelined before the handshake may be acted on (RFC 9051 §6.2.1)
            self._busy = True
            self._events.append(StartTLS())
        elif verb == "LOGIN":
            if len(args) != 2:
                self._bad(tag, "LOGIN needs a user name and a password")
            elif self._plaintext_refused(tag):
                return
            else:
                self._authenticate(tag, args[0], args[1], "LOGIN")
        elif verb == "AUTHENTICATE":
            if not args or len(args) > 2:
                self._bad(tag, "AUTHENTICATE needs a mechanism")
            elif args[0].upper() not in _SASL_MECHANISMS:
                self._out += f"{tag} NO Unsupported mechanism\r\n".encode()
                self._count_error()
            elif self._plaintext_refused(tag):
                return
            else:
                self._sasl_tag, self._sasl_mechanism, self._sasl_user = tag, args[0].upper(), None
                if len(args) == 2:
                    self._sasl_response(args[1].encode())
                else:
                    self._out += _USERNAME_PROMPT if self._sasl_mechanism == "LOGIN" else b"+ \r\n"
        else:
            self._bad(tag, f"{verb[:32]} is not valid before login")

    def _plaintext_refused(self, tag: str) -> bool:
        if self.tls_active or self.allow_plaintext:
            return False
        self._out += f"{tag} NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n".encode()
        self._count_error()
        return True

    def _end_sasl(self) -> str | None:
        """The tag of the AUTHENTICATE under way, which ends here (None: none was)."""
        tag, self._sasl_tag, self._sasl_user = self._sasl_tag, None, None
        return tag

    def _sasl_response(self, line: bytes) -> None:
        user = self._sasl_user
        tag = self._end_sasl() or "*"
        if line.strip() == b"*":
            self._bad(tag, "AUTHENTICATE cancelled")
            return
        if self._sasl_mechanism == "LOGIN":
            self._login_response(tag, user, line.strip())
            return
        try:
            raw = base64.b64decode(line.strip(), validate=True) if line.strip() != b"=" else b""
            authzid, authcid, password = raw.split(b"\x00")
            user, pw, zid = authcid.decode("utf-8"), password.decode("utf-8"), authzid.decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            self._bad(tag, "Malformed PLAIN response")
            return
        if not user:
            self._bad(tag, "Malformed PLAIN response")
            return
        if zid and zid.lower() != user.lower():
            # RFC 4616 §2: acting as someone else needs that right, which nobody has here;
            # logging in as the authcid instead would leave the client thinking it is zid.
            self._out += f"{tag} NO [AUTHORIZATIONFAILED] Acting as another user is not allowed\r\n".encode()
            self._count_error()
            return
        self._authenticate(tag, user, pw, "PLAIN", zid)

    def _login_response(self, tag: str, user: str | None, line: bytes) -> None:
        """One step of SASL LOGIN: the user name (then the password is asked for), or the password."""
        try:
            value = (base64.b64decode(line, validate=True) if line != b"=" else b"").decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            self._bad(tag, "Malformed LOGIN response")
            return
        if user is not None:
            self._authenticate(tag, user, value, "AUTH=LOGIN")
        elif not value:
            self._bad(tag, "Malformed LOGIN response")
        else:
            self._sasl_tag, self._sasl_user = tag, value
            self._out += _PASSWORD_PROMPT

    def _authenticate(self, tag: str, user: str, password: str, mechanism: str, authzid: str = "") -> None:
        self._login_tag = tag
        self._busy = True
        self._events.append(Authenticate(tag, user, password, mechanism, authzid))


def _clean(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _first_word(line: bytes) -> str:
    word = line.split(b" ", 1)[0].decode("ascii", "replace")
    return word if _TAG.fullmatch(word) and len(word) <= 64 else "*"


def _in_id(prior: list[str], out: list[str]) -> bool:
    words = [*prior[:2], *out[:2]][:2]
    return len(words) == 2 and words[1].upper() == "ID"


def _tokens(text: str, first: bool, prior: list[str] = ()) -> list[str]:
    """Atoms and quoted strings of one line fragment (a literal marker already cut off).
    ``prior``: the command's tokens before this fragment.  In ID's argument (RFC 2971: a
    parenthesized list of strings, which clients send before login) parentheses are taken
    as tokens of their own; the edge answers ID the same whatever it holds."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == " ":
            i += 1
            continue
        if c in "()":
            if _in_id(prior, out):
                out.append(c)
                i += 1
                continue
        if c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\':
                    j += 1
                elif text[j] == "\\":
                    raise _Bad("bad escape in a quoted string")
                buf.append(text[j])
                j += 1
            if j >= n:
                raise _Bad("unterminated quoted string")
            out.append("".join(buf))
            i = j + 1
            continue
        j = i
        while j < n and text[j] != " " and not (text[j] in "()" and _in_id(prior, out)):
            j += 1
        word = text[i:j]
        if not (first and not out) and any(ch in _ATOM_SPECIALS or ord(ch) < 0x20 for ch in word):
            raise _Bad(f"unexpected character in {word[:20]!r}")
        out.append(word)
        i = j
    if first and out and not _TAG.fullmatch(out[0]):
        raise _Bad("bad tag")
    return out
