"""POP3 in the mail store: the inner listener for sessions an edge authenticated and handed over.

A connection opens with the hand-off line (``colony.contracts.handoff``); the store checks it,
makes sure it owns the account (taking a vacant one, as a delivery would), and then runs the
POP3 core (``colony.protocols.pop3.rules``) in the TRANSACTION state on the account's INBOX.
Its only other duties are the ones the core asks for: a message's octets (``Retrieve``) and,
at QUIT, expunging what was marked (``Commit``) through the mailbox journal, so deletions
happen only at QUIT and survive only once fsynced.

The listing is fixed at login (RFC 1939: message numbers do not change in a session); UIDL
is ``<uidvalidity>-<uid>`` of INBOX, stable for the message's life.  If the account leaves
this store (drain, lease lost, a newer epoch) the session gets ``-ERR [SYS/TEMP]`` and is
closed with nothing deleted; the client's reconnect reaches the new owner through the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import termios
import time
from collections.abc import Awaitable, Callable

from colony.bus import names
from colony.contracts.handoff import MAX_LINE, NOT_OWNER, HandoffError, Verifier
from colony.events import UsageRecorded
from colony.protocols.pop3.rules import Close, Commit, MessageInfo, Pop3Server, Retrieve, State
from colony.storage import journal
from colony.storage.mailbox import INBOX, MailboxError
from colony_mailstore.accounts import AccountManager, NotOwner, OpenAccount

log = logging.getLogger("colony.mailstore.pop3")

_CHECK = 0.5          # seconds between checks that the account is still ours (drain reacts this fast)
_HANDOFF_TIMEOUT = 10.0
_READ = 64 * 1024
_CLOSE_GRACE = 5.0    # seconds a closing session's client has to take its last answer

Route = Callable[[str], Awaitable[bool]]     # "may this store serve the account now?" (acquires if vacant)
Publish = Callable[[str, bytes], Awaitable[object]]


class Pop3InnerServer:
    def __init__(self, verifier: Verifier, accounts: AccountManager, route: Route, publish: Publish,
                 node_id: str, idle_timeout: float, accepting: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.verifier = verifier
        self.accounts = accounts
        self.route = route
        self.publish = publish
        self.node_id = node_id
        self.idle_timeout = idle_timeout
        self.accepting = accepting
        self.clock = clock
        self.sessions = 0
        self._by_account: dict[str, int] = {}   # account -> its POP3 sessions here

    def sessions_of_domain(self, domain: str) -> int:
        """Open sessions of the domain's accounts here (a move seals only when none is left)."""
        suffix = "@" + domain.lower()
        return sum(n for account, n in self._by_account.items() if account.lower().endswith(suffix))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("POP3 session failed")
        finally:
            self.sessions -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), _HANDOFF_TIMEOUT)
        except (asyncio.LimitOverrunError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return
        try:
            handoff = self.verifier.verify(line[:MAX_LINE + 1], "pop3")
        except HandoffError as exc:
            log.warning("refused a POP3 hand-off from %s: %s", writer.get_extra_info("peername"), exc)
            writer.write(b"-ERR [SYS/PERM] Bad hand-off\r\n")
            return
        account = handoff.account
        if await self.accounts.directory.sealed(account):  # see ImapServer._handoff
            writer.write(b"-ERR [SYS/TEMP] This mailbox is being moved to another region; try again shortly\r\n")
            return
        if not self.accepting() or not await self.route(account):
            writer.write(f"-ERR [SYS/TEMP] {NOT_OWNER} {self.node_id}\r\n".encode())
            return
        lease = self.accounts.ownership.holding(account)
        if lease is None:
            writer.write(f"-ERR [SYS/TEMP] {NOT_OWNER} {self.node_id}\r\n".encode())
            return
        try:
            acct = await self.accounts.get(account, lease)
        except NotOwner:  # released or lost while it opened (a drain)
            writer.write(f"-ERR [SYS/TEMP] {NOT_OWNER} {self.node_id}\r\n".encode())
            return
        try:
            listing, uids = await self._listing(acct)
        except MailboxError as exc:
            writer.write(f"-ERR [SYS/TEMP] {exc}\r\n".encode())
            return
        core = Pop3Server(self.clock, tls_available=False, allow_plaintext=True, idle_timeout=self.idle_timeout)
        core.handed_over(account, listing)
        writer.write(core.data_to_send())
        started = self.clock()
        log.info("POP3 session %s for %s from %s", handoff.session, account, handoff.client_ip)
        closed = asyncio.Event()
        acct.sessions += 1             # never released as idle while we use it
        self._by_account[account] = self._by_account.get(account, 0) + 1
        acct.on_close.append(closed.set)  # a change of owner ends the session at once
        try:
            await self._run(core, acct, uids, reader, writer, closed)
        finally:
            acct.sessions -= 1
            left = self._by_account.pop(account) - 1
            if left:
                self._by_account[account] = left
            with contextlib.suppress(ValueError):
                acct.on_close.remove(closed.set)
            await self._usage(account, self.clock() - started)

    async def _listing(self, acct: OpenAccount) -> tuple[list[MessageInfo], list[int]]:
        async with acct.lock:
            box = next(b for b in acct.mail.mailboxes() if b.name == INBOX)
            messages = acct.mail.messages(INBOX)
        listing = [MessageInfo(m.size, f"{box.uidvalidity}-{m.uid}") for m in messages]
        return listing, [m.uid for m in messages]

    def _still_ours(self, acct: OpenAccount) -> bool:
        return self.accepting() and self.accounts.open.get(acct.address) is acct and acct.lease.held

    async def _run(self, core: Pop3Server, acct: OpenAccount, uids: list[int],
                   reader: asyncio.StreamReader, writer: asyncio.StreamWriter, closed: asyncio.Event) -> None:
        read: asyncio.Task | None = None
        wake = asyncio.ensure_future(closed.wait())
        unsent = 0

        def tick() -> None:
            # The idle timer counts the client's silence, and a client taking a long RETR
            # is not silent: octets leaving our buffers restart it (RFC 1939 §3).
            nonlocal unsent
            now = _unsent(writer)
            if now < unsent:
                core.client_active()
            unsent = now
            core.handle_timer(self.clock())

        try:
            while True:
                event = core.next_event()
                if event is None:
                    if closed.is_set() or not self._still_ours(acct):
                        core.goodbye()
                        continue
                    if await self.accounts.directory.sealed(acct.address):
                        # the domain's move is in its last pass: the source's copy must stop
                        # changing, so the session ends and its deletions are not applied
                        core.goodbye("[SYS/TEMP] This mailbox is being moved to another region; nothing deleted")
                        continue
                    out = core.data_to_send()
                    if out:
                        writer.write(out)
                        unsent = _unsent(writer)
                        while True:     # a client that takes nothing for the idle timeout is dropped
                            try:
                                await asyncio.wait_for(writer.drain(), _CHECK)
                                break
                            except asyncio.TimeoutError:
                                tick()
                                if core.state == State.CLOSED:
                                    break
                        continue    # taking the output lets the core go on with pipelined commands
                    if read is None:
                        read = asyncio.ensure_future(reader.read(_READ))
                    done, _ = await asyncio.wait({read, wake}, timeout=_CHECK, return_when=asyncio.FIRST_COMPLETED)
                    if read in done:
                        data = read.result()
                        read = None
                        if not data:
                            return          # the edge (client) went away: nothing deleted
                        core.receive_data(data)
                    tick()
                elif isinstance(event, Retrieve):
                    await self._retrieve(core, acct, uids[event.number - 1], event.top_lines)
                elif isinstance(event, Commit):
                    core.committed(await self._commit(acct, [uids[n - 1] for n in event.delete]))
                elif isinstance(event, Close):
                    if event.reason == "idle timeout":    # closed without a word
                        if _unsent(writer):
                            writer.transport.abort()     # what a stuck client left untaken goes too
                        return
                    writer.write(core.data_to_send())
                    try:
                        await asyncio.wait_for(writer.drain(), _CLOSE_GRACE)
                    except asyncio.TimeoutError:
                        writer.transport.abort()   # (closing would wait for it to take them)
                    return
        finally:
            wake.cancel()
            if read is not None:
                read.cancel()

    async def _retrieve(self, core: Pop3Server, acct: OpenAccount, uid: int, top: int | None) -> None:
        if not self._still_ours(acct):
            core.retrieve_failed("The mailbox moved; reconnect")
            return
        try:
            async with acct.lock:
                data = await asyncio.to_thread(acct.mail.body, INBOX, uid)
        except MailboxError:
            core.retrieve_failed("Message was deleted by another session", code=None)
            return
        except OSError:
            core.retrieve_failed("Message cannot be read now")
            return
        core.send_message([data], top)

    async def _commit(self, acct: OpenAccount, uids: list[int]) -> bool:
        if not uids:
            return True
        async with acct.lock:
            if not self._still_ours(acct) or not acct.mail.usable:
                return False
            try:
                await asyncio.to_thread(_expunge, acct, uids)
            except journal.Fenced as exc:
                log.warning("%s: POP3 deletions fenced off: %s", acct.address, exc)
                return False
            except Exception as exc:
                log.warning("%s: POP3 deletions failed: %s", acct.address, exc)
                return False
        return True

    async def _usage(self, account: str, seconds: float) -> None:
        domain = account.rpartition("@")[2]
        for metric, amount in (("pop3_sessions", 1), ("pop3_session_seconds", round(seconds, 3))):
            event = UsageRecorded(domain=domain, account=account, metric=metric, amount=amount, source=self.node_id)
            try:
                await self.publish(names.usage_subject(domain), event.encode())
            except Exception as exc:  # metering never fails a session
                log.warning("usage of a POP3 session of %s not recorded: %s", account, exc)


def _unsent(writer: asyncio.StreamWriter) -> int:
    """Octets written to the client and not yet taken by it: asyncio's buffer and the
    kernel's send queue (TIOCOUTQ, Linux; 0 where it cannot be read)."""
    count = writer.transport.get_write_buffer_size()
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            count += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return count


def _expunge(acct: OpenAccount, uids: list[int]) -> None:
    acct.mail.expunge(INBOX, uids)
    acct.mail.commit()
