"""The source's side of ``colony.contracts.account_export``: one account's mail, read-only.

A signed ``export`` line arrives on ``imap-inner`` (``ImapServer`` passes it here).  The state
sent is the owner's live state taken under the account's lock when this store has the account
open (users work in the source until the move seals it), else what the committed journal says
(``read_state``: what the next owner would rebuild).  Nothing here changes the account, so an
interrupted pull costs nothing but a repeat.  A body is sent only if the sent state refers to
it; one the owner collected meanwhile (expunged between the state and the request) is answered
``NO`` and the pull fails, to be repeated against a newer state.

A signed ``mailbody`` line asks for one body of this region's ``mail_bodies`` object store
instead: a job this region's stores sent on to another region with its large body left here
(``MailBodyRef.region``).  The name is checked as the export's body names are (no path from
the wire, and it only ever names an object of that one bucket); ``NO No such body here`` when
the object is gone, so the asking store can tell that from a failure worth retrying.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
from nats.js.errors import ObjectDeletedError, ObjectNotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge

from colony.bus import names
from colony.contracts import account_export as X
from colony.contracts.handoff import MAX_LINE, HandoffError, Verifier
from colony.storage import transfer
from colony.storage.layout import find_account
from colony.storage.mailbox import MailState, read_state
from colony_mailstore.accounts import AccountManager, split_address

log = logging.getLogger("colony.mailstore.export")

REQUEST_TIMEOUT = 60.0   # seconds the puller may think between requests
BODIES_AT_ONCE = 4       # object-store bodies held in memory at once for mailbody requests


class ExportMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.exports = Counter("colony_mailstore_account_exports", "Account exports (domain moves), by result.",
                               ["result"], registry=registry)
        self.octets = Counter("colony_mailstore_account_export_octets", "Body octets sent by account exports.",
                              registry=registry)
        # apart from colony_mailstore_imap_sessions: an export arrives on imap-inner but is
        # another store pulling an account, not a subscriber's session
        self.open = Gauge("colony_mailstore_account_exports_open",
                          "Account exports (domain moves, cross-region reads) in progress on this instance.",
                          registry=registry)
        self.bodies = Counter("colony_mailstore_mail_bodies_served",
                              "Large mail bodies another region's store fetched from this region, by result.",
                              ["result"], registry=registry)


class AccountExporter:
    def __init__(self, accounts: AccountManager, verifier: Verifier, registry: CollectorRegistry | None = None,
                 js: Any = None) -> None:
        self.accounts, self.verifier, self.js = accounts, verifier, js
        self.metrics = ExportMetrics(registry)
        self._bodies = asyncio.Semaphore(BODIES_AT_ONCE)

    async def serve(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.metrics.open.track_inprogress():
            await self._serve(line, reader, writer)

    async def serve_body(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One ``mailbody`` request (``colony.contracts.account_export``)."""
        result = await self._serve_body(line, reader, writer)
        self.metrics.bodies.labels(result).inc()

    async def _serve_body(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        try:
            request = self.verifier.verify(line[:MAX_LINE + 1], X.BODY_PROTO)
        except HandoffError as exc:
            log.warning("refused a mail body request from %s: %s", writer.get_extra_info("peername"), exc)
            writer.write(b"NO Bad mail body request\r\n")
            return "refused"
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT)
            verb, name = X.parse_request(raw[:X.MAX_REQUEST])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            writer.write(b"NO Bad request\r\n")
            return "bad-request"
        if verb != "BODY" or self.js is None:
            writer.write(b"NO Bad request\r\n")
            return "bad-request"
        async with self._bodies:
            try:
                store = await self.js.object_store(names.OBJECT_MAIL_BODIES)
                data = (await store.get(name)).data
            except (ObjectNotFoundError, ObjectDeletedError):
                writer.write(b"NO %s\r\n" % X.NO_SUCH_BODY.encode())
                return "unknown"
            except Exception as exc:   # the bus busy or away: the asking store tries again
                log.warning("mail body %s for %s could not be read: %r", name, request.account, exc)
                writer.write(b"NO Temporarily unavailable\r\n")
                return "error"
            writer.write(b"BODY %d\r\n" % len(data))
            for start in range(0, len(data), X.CHUNK):
                writer.write(data[start:start + X.CHUNK])
                await writer.drain()
        self.metrics.octets.inc(len(data))
        log.info("sent mail body %s (%d octets) for %s to another region", name, len(data), request.account)
        return "ok"

    async def _serve(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = self.verifier.verify(line[:MAX_LINE + 1], X.PROTO)
        except HandoffError as exc:
            log.warning("refused an export from %s: %s", writer.get_extra_info("peername"), exc)
            writer.write(b"NO Bad export request\r\n")
            self.metrics.exports.labels("refused").inc()
            return
        found = await self._state(request.account)
        if found is None:
            writer.write(b"NO %s\r\n" % X.NO_SUCH_ACCOUNT.encode())
            self.metrics.exports.labels("unknown").inc()
            return
        state, bodies_dir = found

        def describe() -> bytes:
            source = transfer.source_digest(state, lambda n: (bodies_dir / n).read_bytes())
            return orjson.dumps({"state": state.to_json(), "messages": source.messages, "digest": source.sha256})

        try:
            payload = await asyncio.to_thread(describe)
        except OSError:
            writer.write(b"NO The account changed while it was read; pull again\r\n")
            self.metrics.exports.labels("changed").inc()
            return
        writer.write(b"STATE %d\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()
        log.info("export of %s: %d messages, journal position %d", request.account, state.messages_total, state.seq)
        result = "ok"
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                break
            except asyncio.LimitOverrunError:
                result = "bad-request"
                break
            try:
                verb, name = X.parse_request(raw[:X.MAX_REQUEST])
            except ValueError:
                writer.write(b"NO Bad request\r\n")
                result = "bad-request"
                break
            if verb == "DONE":
                break
            if name not in state.body_refs:
                writer.write(b"NO No such body in the exported state\r\n")
                await writer.drain()
                continue
            if not await self._send_body(bodies_dir / name, writer):
                writer.write(b"NO The body is gone (expunged meanwhile); pull again\r\n")
                await writer.drain()
        self.metrics.exports.labels(result).inc()

    async def _send_body(self, path: Path, writer: asyncio.StreamWriter) -> bool:
        try:
            f = open(path, "rb")
        except OSError:
            return False
        with f:
            size = f.seek(0, 2)
            f.seek(0)
            writer.write(b"BODY %d\r\n" % size)
            left = size
            while left:
                # a file that shrank under us cannot happen (bodies are written once, then
                # only deleted, and an open file keeps its octets)
                chunk = await asyncio.to_thread(f.read, min(X.CHUNK, left))
                writer.write(chunk)
                left -= len(chunk)
                await writer.drain()
        self.metrics.octets.inc(size)
        return True

    async def _state(self, address: str) -> tuple[MailState, Path] | None:
        acct = self.accounts.open.get(address)
        if acct is not None:
            async with acct.lock:
                # a copy through JSON: the owner's state changes as soon as the lock is released
                # (in a thread: a large account's copy must not stall the loop)
                copy = await asyncio.to_thread(lambda: MailState.from_json(acct.mail.state.to_json()))
                return copy, acct.mail.bodies_dir
        name, domain = split_address(address)
        layout = await self.accounts.directory.layout(domain)
        found = await asyncio.to_thread(find_account, self.accounts.root, domain, name, layout)
        if found is None:
            return None
        mail_dir = found[0].mail_dir
        return await asyncio.to_thread(read_state, mail_dir), mail_dir / "bodies"
