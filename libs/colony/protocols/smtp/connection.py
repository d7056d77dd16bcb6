"""The SMTP server core: RFC 5321 as a state machine, with no sockets and no clock of its own.

Theory of operation
-------------------
The shell owns the socket and the policy; this object owns the protocol.  Bytes from the
client go in with ``receive_data(data, now)`` (``b""`` means the client closed);
``next_event()`` hands out what happened, one event at a time, and ``data_to_send()`` the
bytes to write.  Two kinds of events come out (``colony.protocols.smtp.events``):

* **Commands** (``Helo``, ``MailFrom``, ``RcptTo``, ``DataComplete``) are decisions for the
  policy.  The core stops parsing (``next_event()`` returns ``PAUSED``) until the shell
  answers with ``send(reply)``, so replies leave in command order even when the client
  pipelines and the policy answers asynchronously.
* **Notices** (``DataStarted``, ``DataChunk``, ``MessageAborted``, ``TransactionReset``,
  ``StartTls``, ``Rejected``, ``ConnectionClosed``) need no answer.  Everything the protocol
  itself can answer (syntax, sequence, NOOP, RSET, VRFY, HELP, QUIT, limits, strictness) it
  answers on its own and reports negative answers as ``Rejected`` so the shell can meter
  them.

The session starts silent: ``greet(now)`` (or ``refuse(reply)``) sends the banner; any
octet that arrived before it makes the client an early talker, refused and closed.

Memory stays bounded whatever the client sends: a command line longer than
``max_command_line`` (MAIL/RCPT: 1024 more, for their parameters) is answered 500 5.5.2 and skipped to its end without being kept; the
message body is never held, it leaves as ``DataChunk`` events per received block, and a
text line longer than ``max_text_line`` makes the message fail at its end (552 5.5.2) while
its octets are dropped.  At most one partial line is buffered.

Strictness (the defence against SMTP smuggling): the only line end is CRLF.  A bare CR or
bare LF anywhere (command or message text) is answered 554 5.5.2 and the connection is
closed, so ``\\n.\\n``, ``\\r.\\r`` or ``\\r\\n.\\r`` can never end a message here and start
another.  The message ends only at CRLF "." CRLF.  A client that sends a command before the
reply to the previous one, where RFC 2920 does not allow it (anything before EHLO
advertised PIPELINING, or more after EHLO, HELO, DATA, STARTTLS), is answered 554 5.5.0
and closed.  After ``max_errors`` negative replies the session ends with 421 4.7.0.  BDAT
chunks (RFC 3030) are counted octets and are taken as they are.

Time is an argument: every call that can observe time takes ``now`` (a monotonic clock of
the shell's choosing); ``get_timer()`` is the deadline by which the client must have
said something (RFC 5321 §4.5.3.2), ``handle_timer(now)`` closes with 421 4.4.2 past it.

AUTH (submission, RFC 4954) exists only where ``auth_mechanisms`` names mechanisms (PLAIN,
LOGIN): it is advertised and accepted only once TLS is active (before: 538 5.7.11, so a
password never crosses the network in the clear), only outside a transaction, once per
session.  The core runs the 334 challenge exchange itself and emits one ``Auth`` command
with the decoded credentials; the policy checks them and answers 235 or 535.  A response
line is bounded (``max_auth_line``); "*" cancels (501).  With ``auth_required`` MAIL is
answered 530 5.7.0 until a positive answer to ``Auth``.  The MX leaves both empty and
answers AUTH 502.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass

from colony.protocols.smtp import events as E
from colony.protocols.smtp import replies as R
from colony.protocols.smtp.replies import Reply
from colony.protocols.smtp.syntax import SyntaxProblem, is_helo_name, is_number, parse_mail, parse_rcpt

# Session states.
_GREETING = "greeting"      # banner not sent yet
_HELO = "need-helo"         # greeted, no HELO/EHLO yet
_READY = "ready"            # HELO/EHLO done, no transaction
_MAIL = "mail"              # MAIL accepted, collecting RCPTs
_DATA = "data"              # inside DATA, until CRLF.CRLF
_BDAT = "bdat"              # inside a BDAT chunk of known length
_TLS = "tls"                # 220 to STARTTLS queued; waiting for tls_started()
_AUTH = "auth"              # 334 sent, waiting for the client's response line
_CLOSED = "closed"

_PARAMETER_ALLOWANCE = 1024   # extra octets MAIL/RCPT lines may have for their parameters

# RFC 2920 §3.1: these must end a pipelined group.
_LAST_IN_GROUP = {"EHLO", "HELO", "DATA", "STARTTLS", "AUTH", "QUIT"}


@dataclass(frozen=True)
class ServerConfig:
    hostname: str
    max_message_size: int = 64 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 20               # as settings.smtp_max_errors
    timeout: float = 300.0
    tls_available: bool = False
    tls_active: bool = False
    max_command_line: int = 512       # RFC 5321 §4.5.3.1.4, CRLF included
    max_text_line: int = 1000         # RFC 5321 §4.5.3.1.6, CRLF included
    banner: str = "ESMTP Colony"
    auth_mechanisms: tuple[str, ...] = ()   # e.g. ("PLAIN", "LOGIN") on submission; () = no AUTH
    auth_required: bool = False             # MAIL only after a successful AUTH
    max_auth_line: int = 12288              # RFC 4954 §4: at least 12288 octets per response line


class ServerConnection:
    def __init__(self, config: ServerConfig, now: float) -> None:
        self.config = config
        self.tls_active = config.tls_active
        self._state = _GREETING
        self._buf = bytearray()
        self._events: deque[E.Event] = deque()
        self._out = bytearray()
        self._pending: E.Command | None = None
        self._errors = 0
        self._early = False
        self._skipping_line = False     # discarding the rest of an overlong command line
        self._last_activity = now
        self._pipelining = False        # EHLO advertised it in this session
        self._eof = False
        self._shutdown_requested = False   # shutdown() while a command waited: after its answer
        self.authenticated = False
        self._auth_mechanism = ""
        self._auth_username: str | None = None   # LOGIN: the first answer, until the second
        self._reset_transaction()

    # --- public API -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    def greet(self, now: float) -> bytes:
        """Send the banner (or refuse an early talker)."""
        assert self._state == _GREETING, "greet() once, at the start"
        self._last_activity = now
        if self._early:
            self._reject(R.EARLY_TALKER, "")
            self._out += R.EARLY_TALKER.to_bytes()
            self._close(R.EARLY_TALKER)
        else:
            self._state = _HELO
            self._out += Reply(220, None, f"{self.config.hostname} {self.config.banner}").to_bytes()
        return self.data_to_send()

    def refuse(self, reply: Reply) -> bytes:
        """Refuse the connection instead of greeting (policy said no at connect)."""
        self._out += reply.to_bytes()
        self._close(reply)
        return self.data_to_send()

    def receive_data(self, data: bytes, now: float) -> None:
        if self._state == _CLOSED:
            return
        if not data:
            self._eof = True
            return
        self._last_activity = now
        if self._state == _GREETING:
            self._early = True   # dropped: nothing a client says before the banner counts
            return
        if self._state == _TLS:
            return               # counted as discarded when STARTTLS was seen; never parsed
        self._buf += data
        # Bounded: only the unparsed tail of one line (or the rest of a BDAT chunk) can
        # stay here between calls, and the parsers below consume it.

    def next_event(self) -> E.Event | object:
        while True:
            if self._events:
                return self._events.popleft()
            if self._state == _CLOSED or self._pending is not None or self._state in (_TLS, _GREETING):
                return E.PAUSED
            if not self._step():
                if self._eof:
                    self._abort_message(R.CONNECTION_LOST)
                    self._close(R.CONNECTION_LOST)
                    continue
                return E.NEED_DATA

    def send(self, reply: Reply) -> bytes:
        """Answer the pending Command; returns every byte now queued for the client."""
        pending = self._pending
        if pending is None:
            if self._state == _CLOSED:  # closed meanwhile (shutdown, timeout): nothing to say
                return self.data_to_send()
            raise RuntimeError("send() without a pending command")
        self._pending = None
        if isinstance(pending, E.Helo):
            self._answer_helo(pending, reply)
        elif isinstance(pending, E.MailFrom):
            if reply.positive:
                self._state = _MAIL
                self._smtputf8 = pending.smtputf8
                self._binary = pending.body == "BINARYMIME"
            self._reply(reply, "MAIL", own=False)
        elif isinstance(pending, E.RcptTo):
            if reply.positive:
                self._recipients += 1
            self._reply(reply, "RCPT", own=False)
        elif isinstance(pending, E.DataComplete):
            self._reset_transaction()
            self._state = _READY
            self._reply(reply, "DATA", own=False)
        elif isinstance(pending, E.Auth):
            self.authenticated = reply.positive
            self._reply(reply, "AUTH", own=False)
        if self._shutdown_requested:
            self.shutdown()
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def tls_started(self, now: float) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2)."""
        assert self._state == _TLS
        self.tls_active = True
        self._pipelining = False
        self._buf.clear()
        self._last_activity = now
        self._state = _HELO

    def limit_message_size(self, octets: int) -> None:
        """A smaller limit for this transaction (the recipients' class of service); the
        message is refused 552 5.3.4 at its end if it grows past it, without being kept."""
        self._max_size = min(self._max_size, octets)

    def get_timer(self) -> float | None:
        if self._state in (_CLOSED, _GREETING, _TLS) or self._pending is not None:
            return None   # the shell is busy (policy, handshake), not the client
        return self._last_activity + self.config.timeout

    def handle_timer(self, now: float) -> None:
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            self._abort_message(R.TIMEOUT)
            self._reject(R.TIMEOUT, "")
            self._out += R.TIMEOUT.to_bytes()
            self._close(R.TIMEOUT)

    def shutdown(self) -> None:
        """The server is stopping: 421 now, unless a command waits for the policy: then right
        after its answer.  A message being made durable must hear its 250: a 421 instead
        would have the client send it again (a duplicate) once it had been kept."""
        if self._state == _CLOSED:
            return
        if self._pending is not None:
            self._shutdown_requested = True
            return
        self._abort_message(R.SHUTTING_DOWN)
        self._out += R.SHUTTING_DOWN.to_bytes()
        self._close(R.SHUTTING_DOWN)

    # --- replies and errors -------------------------------------------------------------

    def _reply(self, reply: Reply, command: str, own: bool = True) -> None:
        """Queue a reply; a negative one counts as an error, and one the core chose itself
        (``own``) is reported as ``Rejected`` (the shell meters the policy's refusals)."""
        self._out += reply.to_bytes()
        if not reply.positive:
            if own:
                self._events.append(E.Rejected(reply, command))
            self._count_error()

    def _reject(self, reply: Reply, command: str) -> None:
        self._events.append(E.Rejected(reply, command))

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.config.max_errors and self._state != _CLOSED:
            self._abort_message(R.TOO_MANY_ERRORS)
            self._events.append(E.Rejected(R.TOO_MANY_ERRORS, ""))
            self._out += R.TOO_MANY_ERRORS.to_bytes()
            self._close(R.TOO_MANY_ERRORS)

    def _fatal(self, reply: Reply, command: str) -> None:
        """A violation after which nothing the client sends can be trusted: say so and close."""
        self._abort_message(reply)
        self._events.append(E.Rejected(reply, command))
        self._out += reply.to_bytes()
        self._close(reply)

    def _close(self, reply: Reply | None) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._pending = None
        self._buf.clear()
        self._events.append(E.ConnectionClosed(reply or R.CLOSING))

    def _reset_transaction(self) -> None:
        self._recipients = 0
        self._smtputf8 = False
        self._binary = False
        self._size = 0
        self._too_big = False
        self._line_too_long = False
        self._chunked = False        # BDAT used in this transaction
        self._at_line_start = True
        self._line_len = 0           # octets of the current text line seen so far
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_discard = False   # consume the chunk, then answer with _bdat_reply
        self._bdat_reply: Reply | None = None
        self._in_message = False
        self._max_size = self.config.max_message_size

    def _abort_message(self, reply: Reply) -> None:
        if self._in_message:
            self._events.append(E.MessageAborted(reply))
        self._reset_transaction()

    # --- the parser ---------------------------------------------------------------------

    def _step(self) -> bool:
        """Make progress on the buffer; False when more input is needed."""
        if self._state == _DATA:
            return self._step_data()
        if self._state == _BDAT:
            return self._step_bdat()
        if self._state == _AUTH:
            return self._step_auth()
        return self._step_command()

    def _step_command(self) -> bool:
        limit = self.config.max_command_line
        if bytes(self._buf[:5]).upper() in (b"MAIL ", b"RCPT "):
            # RFC 1869 §4.1.2 / RFC 3461 §5: each extension parameter lengthens the line
            # (ENVID 100, ORCPT 500, ...); a fixed allowance keeps it bounded.
            limit += _PARAMETER_ALLOWANCE
        newline = self._buf.find(b"\n", 0, limit + (0 if not self._skipping_line else len(self._buf)))
        if self._skipping_line:
            if newline < 0:
                keep_cr = self._buf.endswith(b"\r")
                self._buf.clear()
                if keep_cr:
                    self._buf += b"\r"
                return False
            del self._buf[: newline + 1]
            self._skipping_line = False
            return True
        if newline < 0:
            if len(self._buf) >= limit:
                del self._buf[:limit]
                self._skipping_line = True
                self._reply(R.LINE_TOO_LONG, "")
                return True
            return False
        line = bytes(self._buf[: newline + 1])
        del self._buf[: newline + 1]
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self._fatal(R.BARE_LINE_END, "")
            return True
        try:
            text = line[:-2].decode("utf-8")
        except UnicodeDecodeError:
            self._reply(R.BAD_ENCODING, "")
            return True
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        # Octets after this command, before its reply exists, were sent without waiting for
        # it.  BDAT's chunk follows it by design; STARTTLS drops what follows; after QUIT
        # nothing is read anyway.
        if self._buf and verb not in ("BDAT", "STARTTLS", "QUIT") \
                and (not self._pipelining or verb in _LAST_IN_GROUP):
            self._fatal(R.SYNC_ERROR, verb if verb in _COMMANDS else "")
            return True
        self._command(verb, argument)
        return True

    def _command(self, verb: str, argument: str) -> None:
        handler = _COMMANDS.get(verb)
        if handler is None:
            # Not the verb itself: Rejected.command is a metric label, and every verb a client
            # makes up would be one more time series kept for ever.
            self._reply(R.UNRECOGNIZED, "")
            return
        handler(self, argument)

    # --- commands -----------------------------------------------------------------------

    def _cmd_helo(self, argument: str, extended: bool = False) -> None:
        name = argument.strip(" ")
        if not name or not is_helo_name(name.split(" ")[0]):
            self._reply(R.HELO_SYNTAX, "EHLO" if extended else "HELO")
            return
        if self._state in (_MAIL,):
            self._events.append(E.TransactionReset())
        self._reset_transaction()
        self._state = _READY if self._state != _HELO else _HELO
        self._pending = E.Helo(name.split(" ")[0], extended)
        self._events.append(self._pending)

    def _cmd_ehlo(self, argument: str) -> None:
        self._cmd_helo(argument, extended=True)

    def _answer_helo(self, helo: E.Helo, reply: Reply) -> None:
        if not reply.positive:
            self._reply(reply, "EHLO" if helo.extended else "HELO", own=False)
            return
        self._state = _READY
        if not helo.extended:
            self._pipelining = False
            self._out += Reply(250, None, f"{self.config.hostname} Hello {helo.name}").to_bytes()
            return
        self._pipelining = True
        lines = ["PIPELINING", f"SIZE {self.config.max_message_size}"]
        # AUTH goes among the first keywords, never on the last line: their order means nothing
        # (RFC 5321 §4.1.1.1), but clients that look for AUTH only on a "250-" line (nmap's
        # smtp library, which smtp-brute uses, and other naive parsers) miss it on the last.
        if self.config.auth_mechanisms and self.tls_active:
            lines.append("AUTH " + " ".join(self.config.auth_mechanisms))
        lines += ["8BITMIME", "BINARYMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if self.config.tls_available and not self.tls_active:
            lines.append("STARTTLS")
        self._out += Reply(250, None, f"{self.config.hostname} Hello {helo.name}").to_bytes(tuple(lines))

    def _cmd_mail(self, argument: str) -> None:
        if self._state == _HELO:
            return self._reply(R.NEED_HELO, "MAIL")
        if self._state != _READY:
            return self._reply(R.NESTED_MAIL, "MAIL")
        if self.config.auth_required and not self.authenticated:
            return self._reply(R.AUTH_REQUIRED, "MAIL")
        try:
            parsed = parse_mail(argument, self.config.max_message_size)
        except SyntaxProblem as problem:
            return self._reply(problem.reply, "MAIL")
        self._pending = E.MailFrom(**parsed)
        self._events.append(self._pending)

    def _cmd_rcpt(self, argument: str) -> None:
        if self._state in (_HELO, _READY):
            return self._reply(R.NEED_MAIL if self._state == _READY else R.NEED_HELO, "RCPT")
        if self._chunked:
            return self._reply(R.MIXED_DATA_BDAT, "RCPT")
        try:
            parsed = parse_rcpt(argument, self._smtputf8)
        except SyntaxProblem as problem:
            return self._reply(problem.reply, "RCPT")
        if self._recipients >= self.config.max_recipients:
            # 452 is not an error of the client (RFC 5321 §4.5.3.1.10): it sends the rest later.
            self._out += R.TOO_MANY_RECIPIENTS.to_bytes()
            self._reject(R.TOO_MANY_RECIPIENTS, "RCPT")
            return
        self._pending = E.RcptTo(**parsed)
        self._events.append(self._pending)

    def _cmd_data(self, argument: str) -> None:
        if argument.strip(" "):
            return self._reply(R.SYNTAX_ERROR, "DATA")
        if self._state != _MAIL:
            return self._reply(R.NEED_MAIL if self._state == _READY else R.NEED_HELO, "DATA")
        if self._chunked:
            return self._reply(R.MIXED_DATA_BDAT, "DATA")
        if self._recipients == 0:
            return self._reply(R.NO_VALID_RECIPIENTS, "DATA")
        if self._binary:
            return self._reply(R.BINARY_NEEDS_BDAT, "DATA")
        self._state = _DATA
        self._in_message = True
        self._out += R.START_DATA.to_bytes()
        self._events.append(E.DataStarted(chunked=False))

    def _cmd_bdat(self, argument: str) -> None:
        words = argument.split(" ")
        if not (1 <= len(words) <= 2) or not is_number(words[0]) \
                or (len(words) == 2 and words[1].upper() != "LAST"):
            # Without a valid size the chunk cannot be skipped: nothing after it can be trusted.
            self._fatal(R.SYNTAX_ERROR, "BDAT")
            return
        self._bdat_left = int(words[0])
        self._bdat_last = len(words) == 2
        problem = None
        if self._state != _MAIL:
            problem = R.NEED_MAIL if self._state == _READY else R.NEED_HELO
        elif self._recipients == 0:
            problem = R.NO_VALID_RECIPIENTS
        left, last = self._bdat_left, self._bdat_last
        if problem is not None:
            self._abort_message(problem)
            self._bdat_left, self._bdat_last = left, last
            self._bdat_discard, self._bdat_reply = True, problem
        elif not self._in_message:
            self._in_message = True
            self._chunked = True
            self._events.append(E.DataStarted(chunked=True))
        self._return_state = self._state
        self._state = _BDAT

    def _cmd_rset(self, argument: str) -> None:
        if argument.strip(" "):
            return self._reply(R.SYNTAX_ERROR, "RSET")
        if self._state == _MAIL:
            self._events.append(E.TransactionReset())
            self._state = _READY
        self._reset_transaction()
        self._out += R.RESET_OK.to_bytes()

    def _cmd_noop(self, argument: str) -> None:
        self._out += R.NOOP_OK.to_bytes()

    def _cmd_quit(self, argument: str) -> None:
        self._abort_message(R.CLOSING)
        self._out += R.CLOSING.to_bytes()
        self._close(R.CLOSING)

    def _cmd_vrfy(self, argument: str) -> None:
        if not argument.strip(" "):
            return self._reply(R.SYNTAX_ERROR, "VRFY")
        self._out += R.VRFY_CANNOT.to_bytes()

    def _cmd_expn(self, argument: str) -> None:
        self._reply(R.NOT_IMPLEMENTED, "EXPN")

    def _cmd_help(self, argument: str) -> None:
        # The commands this session can use: STARTTLS only while it can still start TLS (not
        # on the implicit-TLS port, not after STARTTLS), as EHLO says; AUTH where EHLO offers it.
        verbs = "EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
        if self.config.auth_mechanisms and self.tls_active:
            verbs += " AUTH"
        if self.config.tls_available and not self.tls_active:
            verbs += " STARTTLS"
        self._out += R.HELP._replace(text=f"See RFC 5321; commands: {verbs}").to_bytes()

    def _cmd_auth(self, argument: str) -> None:
        if not self.config.auth_mechanisms:
            return self._reply(R.AUTH_NOT_AVAILABLE, "AUTH")
        if self._state == _HELO:
            return self._reply(R.NEED_HELO, "AUTH")
        if not self.tls_active:
            return self._reply(R.AUTH_NEEDS_TLS, "AUTH")
        if self.authenticated:
            return self._reply(R.AUTH_ALREADY, "AUTH")
        if self._state != _READY:
            return self._reply(R.AUTH_IN_TRANSACTION, "AUTH")
        mechanism, _, initial = argument.strip(" ").partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self.config.auth_mechanisms or mechanism not in ("PLAIN", "LOGIN"):
            return self._reply(R.AUTH_MECHANISM, "AUTH")
        self._auth_mechanism, self._auth_username = mechanism, None
        initial = initial.strip(" ")
        if initial:
            self._auth_response(initial)
        else:
            self._challenge()

    def _challenge(self) -> None:
        # LOGIN's prompts are "Username:" and "Password:" in base64 (draft-murchison-sasl-login).
        if self._auth_mechanism == "LOGIN":
            text = "VXNlcm5hbWU6" if self._auth_username is None else "UGFzc3dvcmQ6"
        else:
            text = ""
        self._out += f"334 {text}\r\n".encode()
        self._state = _AUTH

    def _step_auth(self) -> bool:
        limit = self.config.max_auth_line
        newline = self._buf.find(b"\n", 0, limit)
        if newline < 0:
            if len(self._buf) >= limit:
                del self._buf[:limit]
                self._skipping_line = True
                self._state = _READY
                self._reply(R.AUTH_TOO_LONG, "AUTH")
                return True
            return False
        line = bytes(self._buf[: newline + 1])
        del self._buf[: newline + 1]
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self._fatal(R.BARE_LINE_END, "AUTH")
            return True
        self._state = _READY
        self._auth_response(line[:-2].decode("ascii", "replace").strip(" "))
        return True

    def _auth_response(self, text: str) -> None:
        """One base64 response (the initial one or an answer to 334)."""
        if text == "*":
            return self._reply(R.AUTH_CANCELLED, "AUTH")
        try:
            decoded = base64.b64decode(text.encode("ascii"), validate=True) if text != "=" else b""
            value = decoded.decode("utf-8")
        except (ValueError, UnicodeError):
            return self._reply(R.AUTH_BAD_ENCODING, "AUTH")
        if self._auth_mechanism == "PLAIN":
            parts = value.split("\0")
            if len(parts) != 3 or not parts[1]:
                return self._reply(R.AUTH_BAD_ENCODING, "AUTH")
            authzid, username, password = parts
        elif self._auth_username is None:
            self._auth_username = value
            return self._challenge()
        else:
            authzid, username, password = "", self._auth_username, value
            self._auth_username = None
        self._pending = E.Auth(self._auth_mechanism, username, password, authzid)
        self._events.append(self._pending)

    def _cmd_starttls(self, argument: str) -> None:
        if argument.strip(" "):
            return self._reply(R.SYNTAX_ERROR, "STARTTLS")
        if self.tls_active:
            return self._reply(R.TLS_ACTIVE, "STARTTLS")
        if not self.config.tls_available:
            return self._reply(R.TLS_NOT_AVAILABLE, "STARTTLS")
        if self._state == _HELO:
            return self._reply(R.NEED_HELO, "STARTTLS")
        if self._state == _MAIL:
            self._events.append(E.TransactionReset())
        self._reset_transaction()
        discarded = len(self._buf)
        self._buf.clear()
        self._out += R.READY_TLS.to_bytes()
        self._state = _TLS
        self._events.append(E.StartTls(discarded))

    # --- message text (DATA) ------------------------------------------------------------

    def _step_data(self) -> bool:
        buf = self._buf
        if not buf:
            return False
        last_lf = buf.rfind(b"\n")
        if last_lf < 0:
            return self._partial_line(len(buf))
        block = bytes(buf[: last_lf + 1])
        # The terminator: CRLF "." CRLF, where the first CRLF may have ended the last block.
        if self._at_line_start and block.startswith(b".\r\n"):
            end = 0
        else:
            end = block.find(b"\r\n.\r\n")
            end = end + 2 if end >= 0 else -1
        content = block if end < 0 else block[:end]
        consumed = len(block) if end < 0 else end + 3
        if content.count(b"\n") != content.count(b"\r\n") or content.count(b"\r") != content.count(b"\r\n"):
            self._fatal(R.BARE_LINE_END, "DATA")
            return True
        del buf[:consumed]
        self._take_lines(content)
        if end >= 0:
            self._end_of_data()
        return True

    def _partial_line(self, n: int) -> bool:
        """Only part of a line is here: keep it unless it is already longer than a line may be."""
        buf = self._buf
        inner = buf[:-1] if buf.endswith(b"\r") else buf   # a final CR may be half of a CRLF
        if b"\r" in inner:
            self._fatal(R.BARE_LINE_END, "DATA")
            return True
        # The limit does not count a dot added for transparency (RFC 5321 §4.5.3.1.6).
        stuffed = self._at_line_start and buf.startswith(b".")
        if self._line_len + n <= self.config.max_text_line + stuffed:
            return False
        # Over-long: the message will be refused; drop its octets, keep a trailing CR so a
        # CRLF split across reads is still seen as one.
        keep_cr = buf.endswith(b"\r")
        self._line_too_long = True
        self._line_len += n
        self._at_line_start = False
        buf.clear()
        if keep_cr:
            buf += b"\r"
            self._line_len -= 1
        return False

    def _take_lines(self, content: bytes) -> None:
        if not content:
            return
        lines = content.split(b"\r\n")
        # lines[-1] is b"" (content ends with CRLF); lines[0] may continue a partial line.
        # Not counting a dot added for transparency (RFC 5321 §4.5.3.1.6: 1000 octets "not
        # counting the leading dot duplicated for transparency").
        first = len(lines[0]) + self._line_len - (self._at_line_start and lines[0].startswith(b"."))
        longest = max(first, max((len(line) - line.startswith(b".") for line in lines[1:]), default=0))
        if longest + 2 > self.config.max_text_line:
            self._line_too_long = True
        if self._at_line_start and content.startswith(b"."):
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        self._at_line_start = True
        self._line_len = 0
        self._emit(content)

    def _emit(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_size:
            self._too_big = True
        if not (self._too_big or self._line_too_long) and data:
            self._events.append(E.DataChunk(data))

    def _end_of_data(self) -> None:
        chunked = self._chunked
        if self._buf and not self._pipelining:
            # Commands glued to the end of the message by a client that may not pipeline:
            # the classic smuggling shape.  Accept neither.
            self._fatal(R.SYNC_ERROR, "DATA")
            return
        if self._too_big or self._line_too_long:
            reply = R.MESSAGE_TOO_BIG if self._too_big else R.DATA_LINE_TOO_LONG
            self._abort_message(reply)
            self._state = _READY
            self._reply(reply, "DATA")
            return
        self._pending = E.DataComplete(self._size, chunked)
        self._events.append(self._pending)
        self._in_message = False

    # --- message octets (BDAT) ----------------------------------------------------------

    def _step_bdat(self) -> bool:
        if self._bdat_left:
            if not self._buf:
                return False
            take = bytes(self._buf[: self._bdat_left])
            del self._buf[: len(take)]
            self._bdat_left -= len(take)
            if not self._bdat_discard:
                self._emit(take)
            if self._bdat_left:
                return True
        # The chunk is complete.
        self._state = self._return_state
        if self._bdat_discard:
            reply = self._bdat_reply or R.NEED_MAIL
            self._bdat_discard, self._bdat_reply = False, None
            self._reply(reply, "BDAT")
            return True
        if self._too_big:
            self._abort_message(R.MESSAGE_TOO_BIG)
            self._state = _READY
            self._reply(R.MESSAGE_TOO_BIG, "BDAT")
            return True
        if self._bdat_last:
            self._end_of_data()
        else:
            self._out += Reply(250, "2.0.0", f"{self._size} octets received").to_bytes()
        return True


_COMMANDS = {
    "HELO": ServerConnection._cmd_helo,
    "EHLO": ServerConnection._cmd_ehlo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "QUIT": ServerConnection._cmd_quit,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "HELP": ServerConnection._cmd_help,
    "AUTH": ServerConnection._cmd_auth,
    "STARTTLS": ServerConnection._cmd_starttls,
}
