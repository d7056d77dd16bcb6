"""Exporting one account's mail from its owner over the inner connection (a domain move).

Theory of operation
-------------------
A domain moving to another region has each account copied by the target region's owner of
the account, which pulls from the source region's owner over the same signed inner TCP
connection the edges use for IMAP hand-offs (``colony.contracts.handoff``): the mail stores
of two regions can reach each other's inner listeners, while the object store and the
account's journal are region-local.  The conversation, on the source's ``imap-inner``
listener::

    C: COLONY-HANDOFF 1 export <account> <session> - <issued-ms> <mac>\\r\\n
    S: STATE <octets>\\r\\n<JSON: {"state": MailState.to_json(), "messages": n, "digest": hex}>
    C: BODY <name>\\r\\n            (any number of times, one at a time)
    S: BODY <octets>\\r\\n<octets>   or   NO <text>\\r\\n
    C: DONE\\r\\n                   (or simply closes)

or ``NO <text>\\r\\n`` instead of ``STATE`` (bad line, account unknown here).  The state is
what the source's journal says at one instant (its owner's live state under the account's
lock, or the committed journal read without claiming it); ``messages`` and ``digest`` are
``colony.storage.transfer.source_digest`` of that same state, so the target verifies against
the state it merged, not a later one.  A body may be asked for only if that state refers to
it (no path is ever taken from the wire).  The source changes nothing: an interrupted pull
is resumed by pulling again, because the merge is idempotent.

Memory is bounded on both sides: the source streams a body from its file in chunks; the
client refuses a state over ``max_state`` octets or a body over ``max_body`` octets and holds
one body at a time (what ``transfer.merge`` asks for).

One large body of the object store (``mailbody``)
-------------------------------------------------
A mail store that sends a job on to another region (a domain moving or moved there) cannot
put a body over ``contracts.mail.CROSS_REGION_MAX_BYTES`` inline; it sends the job with its
``body_ref`` naming its own region, and the store that takes it in the other region fetches
the body from any READY mail store of that region (the object store is region-wide)::

    C: COLONY-HANDOFF 1 mailbody <account> <session> - <issued-ms> <mac>\r\n
    C: BODY <object name>\r\n
    S: BODY <octets>\r\n<octets>   or   NO <text>\r\n

``account`` is the recipient the body is fetched for (logs).  ``NO No such body here`` means
the object is gone for good (older than the object store's max age): the job can never be
stored; any other ``NO`` is temporary.  The fetcher checks the body's SHA-256 against the
``body_ref``'s.  The server holds the body in memory while it sends it (the object store's
client reads an object whole), a few at a time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson

from colony.contracts.handoff import sign
from colony.storage.mailbox import AccountMail, MailState
from colony.storage import transfer

PROTO = "export"
BODY_PROTO = "mailbody"
MAX_STATE = 256 * 1024 * 1024   # octets of state JSON (about a million messages)
MAX_BODY = 256 * 1024 * 1024    # octets of one body
MAX_REQUEST = 512               # octets of one request line
CHUNK = 64 * 1024
# The source's words when the account has no storage in its region (never received mail):
# nothing to copy, which the puller tells apart from a failure.
NO_SUCH_ACCOUNT = "No such account here"
NO_SUCH_BODY = "No such body here"   # a mailbody's object is gone for good


class ExportError(Exception):
    """The source refused, or the conversation broke; the pull may simply be repeated."""


class NoSuchAccount(ExportError):
    """The source region stores nothing for the account (``NO No such account here``)."""


class NoSuchBody(ExportError):
    """The source region's object store no longer has the body (``NO No such body here``)."""


def parse_request(line: bytes) -> tuple[str, str | None]:
    """``(verb, argument)`` of a client line: ("BODY", name), ("DONE", None); ValueError if neither."""
    text = line.decode("ascii", "replace").rstrip("\r\n")
    verb, _, arg = text.partition(" ")
    if verb == "BODY" and arg and "/" not in arg and not arg.startswith(".") and len(arg) <= 200:
        return verb, arg
    if verb == "DONE" and not arg:
        return verb, None
    raise ValueError(f"bad request {text[:60]!r}")


@dataclass(frozen=True)
class Exported:
    state: MailState
    digest: transfer.Digest


class ExportClient:
    """One pull: ``open()`` gets the state, ``body(name)`` one body at a time, ``close()``."""

    def __init__(self, host: str, port: int, secret: bytes, account: str, *, timeout: float = 30.0,
                 max_state: int = MAX_STATE, max_body: int = MAX_BODY) -> None:
        self.host, self.port, self.secret, self.account = host, port, secret, account
        self.timeout, self.max_state, self.max_body = timeout, max_state, max_body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self, proto: str) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout)
        self._writer.write(sign(self.secret, proto, self.account, "-", int(time.time() * 1000)))

    async def open(self) -> Exported:
        await self._connect(PROTO)
        size = await self._sized(b"STATE", self.max_state)
        raw = await self._read(size)

        def decode() -> Exported:    # in a thread: a large account's state must not stall the loop
            try:
                data = orjson.loads(raw)
                return Exported(MailState.from_json(data["state"]), transfer.Digest(data["messages"], data["digest"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ExportError(f"the source's state does not parse: {exc!r}") from exc

        return await asyncio.to_thread(decode)

    async def body(self, name: str) -> bytes:
        assert self._writer is not None
        self._writer.write(f"BODY {name}\r\n".encode())
        return await self._read(await self._sized(b"BODY", self.max_body))

    async def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.write(b"DONE\r\n")
                self._writer.close()
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._writer = None

    async def _sized(self, verb: bytes, limit: int) -> int:
        assert self._reader is not None
        try:
            line = await asyncio.wait_for(self._reader.readuntil(b"\n"), self.timeout)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError) as exc:
            raise ExportError(f"the source broke off: {exc!r}") from exc
        head, _, arg = line.rstrip(b"\r\n").partition(b" ")
        if head == b"NO" and arg == NO_SUCH_ACCOUNT.encode():
            raise NoSuchAccount(f"the source answered {line[:200]!r}")
        if head == b"NO" and arg == NO_SUCH_BODY.encode():
            raise NoSuchBody(f"the source answered {line[:200]!r}")
        if head != verb or not arg.isdigit():
            raise ExportError(f"the source answered {line[:200]!r}")
        size = int(arg)
        if size > limit:
            raise ExportError(f"the source offers {size} octets of {verb.decode()}; at most {limit} are taken")
        return size

    async def _read(self, size: int) -> bytes:
        assert self._reader is not None
        try:
            return await asyncio.wait_for(self._reader.readexactly(size), self.timeout)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError) as exc:
            raise ExportError(f"the source broke off: {exc!r}") from exc


async def fetch_mail_body(client: ExportClient, name: str) -> bytes:
    """One body of the source region's object store (``mailbody``), for ``client.account``;
    ``NoSuchBody`` if it is gone for good; ``ExportError``, ``OSError`` or a timeout for
    anything worth trying again."""
    try:
        await client._connect(BODY_PROTO)
        return await client.body(name)
    finally:
        await client.close()


@dataclass(frozen=True)
class PullReport:
    merge: transfer.MergeReport
    source: transfer.Digest
    target: transfer.Digest

    @property
    def verified(self) -> bool:
        return self.source == self.target


async def pull_into(client: ExportClient, target: AccountMail, *, batch: int = 200) -> PullReport:
    """Merge the source's account into ``target`` (held by the caller, who owns it) and
    verify.  The merge runs in a worker thread; each body it asks for is fetched through the
    loop, one at a time.  The caller keeps every other writer of ``target`` out for the whole
    call (in a mail store: the account's lock, so routed deliveries wait): the merge indexes
    the target once, and a delivery slipped in between its batches could be stored twice."""
    loop = asyncio.get_running_loop()
    try:
        exported = await client.open()

        def read_body(name: str) -> bytes:
            return asyncio.run_coroutine_threadsafe(client.body(name), loop).result()

        def merge_and_check() -> tuple[transfer.MergeReport, transfer.Digest]:
            report = transfer.merge(target, exported.state, read_body, batch=batch)
            return report, transfer.target_digest(target, transfer.source_keys(exported.state))

        report, target_digest = await asyncio.to_thread(merge_and_check)
    finally:
        await client.close()
    return PullReport(report, exported.digest, target_digest)
