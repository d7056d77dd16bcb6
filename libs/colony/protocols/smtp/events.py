"""What the SMTP core tells its shell.  ``Command`` events wait for ``ServerConnection.send``
(the policy decides); the others are notices the shell acts on and the core does not wait for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from colony.protocols.smtp.replies import Reply


class Event:
    needs_reply: ClassVar[bool] = False


class Command(Event):
    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True)
class Helo(Command):
    """HELO or EHLO.  A positive reply to EHLO gets the extension list appended by the core."""

    name: str
    extended: bool


@dataclass(frozen=True)
class MailFrom(Command):
    """MAIL FROM.  ``address`` is the reverse-path without <> ("" for the null sender)."""

    address: str
    size: int | None = None           # SIZE= (RFC 1870), the client's estimate
    body: str | None = None           # BODY= 7BIT | 8BITMIME | BINARYMIME
    smtputf8: bool = False            # RFC 6531
    ret: str | None = None            # RET= FULL | HDRS (RFC 3461)
    envid: str | None = None          # ENVID=, xtext-decoded


@dataclass(frozen=True)
class RcptTo(Command):
    """RCPT TO.  ``address`` is the forward-path without <> (may be a bare "Postmaster")."""

    address: str
    notify: tuple[str, ...] | None = None   # NOTIFY= NEVER | SUCCESS,FAILURE,DELAY
    orcpt: str | None = None                 # ORCPT= "type;address", xtext-decoded


@dataclass(frozen=True)
class DataComplete(Command):
    """The message ended (CRLF.CRLF or BDAT … LAST) within every limit: 250 only once it is safe."""

    size: int
    chunked: bool


@dataclass(frozen=True)
class Auth(Command):
    """AUTH (RFC 4954) with the credentials decoded by the core (PLAIN or LOGIN), only ever
    on a TLS-protected session.  Answer ``AUTH_OK`` (235) to authenticate the session or a
    refusal (535 5.7.8, 454 4.7.0); the core keeps ``authenticated`` from a positive answer."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True)
class DataStarted(Event):
    """DATA was answered 354 or the first BDAT chunk began: open a spool for the body."""

    chunked: bool


@dataclass(frozen=True)
class DataChunk(Event):
    """Message octets as they arrive: dot-stuffing removed, CRLF line ends, never the terminator."""

    data: bytes


@dataclass(frozen=True)
class MessageAborted(Event):
    """The message in progress will not be accepted (already refused with ``reply``): drop the spool."""

    reply: Reply


@dataclass(frozen=True)
class TransactionReset(Event):
    """RSET, a new EHLO or STARTTLS ended the mail transaction."""


@dataclass(frozen=True)
class StartTls(Event):
    """220 was queued: write it, do the TLS handshake, then call ``tls_started()``.

    ``discarded`` octets the client sent after STARTTLS before the handshake were dropped
    (RFC 3207 §6 / CVE-2011-0411: they must not be read as commands of the TLS session).
    """

    discarded: int


@dataclass(frozen=True)
class Rejected(Event):
    """The core refused something on its own (syntax, sequence, limits, strictness).
    ``command`` is one of the verbs the core knows, or "" (never what a client made up)."""

    reply: Reply
    command: str = ""


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """Write what is queued, then close; ``reply`` is the last thing said (221, 421, 554)."""

    reply: Reply


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")   # feed receive_data()
PAUSED = _Sentinel("PAUSED")         # answer the last Command with send(), or finish STARTTLS
