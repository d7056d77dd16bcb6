"""Every SMTP reply the core sends on its own, by name, so tests and the policy use the names.

A ``Reply`` is a code, an RFC 3463 enhanced status (``None`` where RFC 2034 forbids one: the
greeting and HELO/EHLO) and text.  ``reason`` is the short label a rejection is metered and
logged under (``colony_smtp_rejected_total{reason=…}``); positive replies have none.
"""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    code: int
    status: str | None
    text: str
    reason: str = ""

    @property
    def positive(self) -> bool:
        return self.code < 400

    def to_bytes(self, more_lines: tuple[str, ...] = ()) -> bytes:
        """The wire form; ``more_lines`` follow the first line as a multi-line reply (EHLO)."""
        lines = [self._line(self.text)] + [self._line(t) for t in more_lines]
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def _line(self, text: str) -> str:
        # A reply line must not carry CR or LF of its own (text may quote client input).
        text = text.replace("\r", " ").replace("\n", " ")
        return f"{self.status} {text}" if self.status else text


# --- positive -------------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
START_DATA = Reply(354, None, "Start mail input; end with <CRLF>.<CRLF>")
QUEUED = Reply(250, "2.0.0", "Message accepted for delivery")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
CLOSING = Reply(221, "2.0.0", "Bye")
VRFY_CANNOT = Reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: ...")  # the list is the session's (connection._cmd_help)
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")

# --- connection -----------------------------------------------------------------------------
EARLY_TALKER = Reply(554, "5.5.0", "Protocol error: client sent data before the greeting", "early_talker")
SYNC_ERROR = Reply(554, "5.5.0", "Protocol error: command pipelining not allowed here", "pipelining")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors; closing connection", "too_many_errors")
TIMEOUT = Reply(421, "4.4.2", "Timeout; closing connection", "timeout")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down; try again later", "shutdown")
CONNECTION_LOST = Reply(421, "4.4.2", "Connection lost", "connection_lost")  # never sent: the client left
CONNECTION_REFUSED = Reply(554, "5.7.1", "Connection refused", "connection_refused")

# --- syntax ---------------------------------------------------------------------------------
UNRECOGNIZED = Reply(500, "5.5.1", "Command unrecognized", "unrecognized_command")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long", "line_too_long")
BARE_LINE_END = Reply(554, "5.5.2", "Bare CR or LF received; lines must end with CRLF", "bare_cr_lf")
BAD_ENCODING = Reply(500, "5.5.2", "Command is not valid UTF-8", "bad_encoding")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments", "syntax")
HELO_SYNTAX = Reply(501, "5.5.4", "HELO/EHLO needs a domain or address literal", "syntax")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax", "syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax", "syntax")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized or not implemented", "syntax")
UTF8_NOT_DECLARED = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter", "syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented", "not_implemented")

# --- sequence -------------------------------------------------------------------------------
NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first", "bad_sequence")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first", "bad_sequence")
NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command", "bad_sequence")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first", "bad_sequence")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients", "bad_sequence")
BINARY_NEEDS_BDAT = Reply(503, "5.5.1", "BODY=BINARYMIME needs BDAT", "bad_sequence")
MIXED_DATA_BDAT = Reply(503, "5.5.1", "DATA and BDAT cannot be mixed", "bad_sequence")
TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active", "bad_sequence")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available", "tls_unavailable")
AUTH_NOT_AVAILABLE = Reply(502, "5.5.1", "AUTH not available on this service", "not_implemented")

# --- authentication (submission, RFC 4954) -------------------------------------------------
AUTH_CHALLENGE = Reply(334, None, "")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid", "auth_failed")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism", "auth_before_tls")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required", "auth_required")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated", "bad_sequence")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction", "bad_sequence")
AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type", "syntax")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled", "auth_cancelled")
AUTH_BAD_ENCODING = Reply(501, "5.5.2", "Cannot decode the response (base64)", "syntax")
AUTH_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long", "line_too_long")

# --- limits ---------------------------------------------------------------------------------
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit", "size")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients", "too_many_recipients")
DATA_LINE_TOO_LONG = Reply(552, "5.5.2", "Message has a line longer than 1000 octets", "line_too_long")
QUOTA_TEMPORARY = Reply(452, "4.2.2", "Mailbox full", "quota")
QUOTA_PERMANENT = Reply(552, "5.2.2", "Mailbox full", "quota")
TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary failure; try again later", "temporary_failure")
