"""A region's mail stores answering a domain move's questions (``colony.contracts.move_requests``).

Theory of operation
-------------------
The primary region's controller asks a *region* (``names.domain_move_subject(region, verb)``,
queue group ``names.QUEUE_DOMAIN_MOVE``), so any one of its stores takes a question; what it
cannot answer alone it passes on to its region's peers on the region-local
``names.mailstore_move_subject(peer, verb)`` (same request body, same reply types):

``pull`` (the target region)
    Only the account's owner in this region may write it (the single-writer rule), so the
    store that took the question asks delivery's routing where the account lives
    (``Delivery.locate``: held here, vacant and ours to take, or another owner) and passes
    the question to that owner, which pulls.  The owner holds the account's lock for the
    whole pass (routed deliveries to the account wait), finds the source region's owner of
    the account -- its lease in the source's ``account_owners``, else rendezvous placement
    over the source's READY stores, read through the source's JetStream domain as an edge
    does for IMAP -- and runs ``account_export.pull_into`` against that store's
    ``imap-inner`` listener.  An account the source stores nothing for (it never got mail)
    is an empty, verified copy.  The copy runs as a job of the owner's, not of the question:
    the owner answers within ``mr.PULL_ANSWER_WITHIN`` -- the copy's result, or "still under
    way" while the job goes on -- and the same question asked again (the same move, account,
    pass and start) waits for that job or takes its result rather than starting another.  A
    store that dies with the question in hand (the owner, or the store that passed it on) is
    therefore noticed by the asker within ``mr.PULL_ASK_TIMEOUT`` and the question asked
    again; it reaches the account's next owner once the lease has passed (``NoResponders``
    from the dead one until then), which pulls again into what the dead one committed.
``sessions`` (the source region)
    The domain's open IMAP and POP sessions summed over every READY store of the region
    (each peer answers for itself; a peer that is gone has none, one that does not answer
    makes the question fail, to be asked again), and how many of the domain's accounts the
    region's storage still holds (counted on the shared storage, which every store sees).
``remove`` (the source region)
    Every store closes the domain's accounts it has open and releases their leases, then
    the store that took the question deletes the domain's accounts from the shared
    storage.  Idempotent: a repeat finds nothing and says ``removed: 0``.

Refusals (a typed ``ErrorReply``, which the controller retries): a question for another
region's role (a pull whose target, or a sessions/remove whose source, is not this region);
a move the directory does not know as the domain's current one (``move_id``); a pull after the
move flipped (the target's users now change the mailboxes a late pull would undo); a remove
before the directory says the domain is homed in the target; a question of an older
controller epoch than one already seen for the move (a controller that lost its lease).
Work is bounded: pulls run ``MAX_PULLS`` at a time, each holding one body in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from colony.bus import names
from colony.bus.connection import unsubscribe_all
from colony.cluster.lease import read_lease
from colony.cluster.membership import NodeState
from colony.cluster.ownership import place
from colony.cluster.view import read_nodes
from colony.contracts import account_export as X
from colony.contracts import move_requests as mr
from colony.storage import transfer
from colony.storage.layout import ACCOUNT_SUFFIX, StorageLayout, domain_dir, find_account
from colony.settings import Role
from colony.telemetry import extract_context, inject_headers
from colony_mailstore.accounts import AccountManager, split_address

log = logging.getLogger("colony.mailstore.moves")
tracer = trace.get_tracer("colony.mailstore")

MAX_PULLS = 4             # account pulls at once on one store (each holds one body in memory)
PEER_TIMEOUT = 10.0       # seconds for a peer's sessions/remove answer
PULL_JOBS_KEPT = 256      # pull jobs (running, or finished with a result nobody took yet) on one store
REMOTE_TIMEOUT = 5.0      # seconds for each read of the source region's buckets
EPOCHS_KEPT = 1_000       # moves whose newest controller epoch is remembered

_REQUESTS = {names.MOVE_PULL: mr.PullRequest, names.MOVE_SESSIONS: mr.SessionsRequest,
             names.MOVE_REMOVE: mr.RemoveRequest}


class Refused(Exception):
    """The question is answered with an ``ErrorReply`` carrying this text."""


class MoveMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter("colony_mailstore_move_requests", "Domain move questions answered, by verb and result.",
                                ["verb", "result"], registry=registry if registry is not None else CollectorRegistry())


class MoveServer:
    def __init__(self, nc, node_id: str, region: str, accounts: AccountManager, delivery, members,
                 secret: bytes | None, sessions_of_domain: Callable[[str], int],
                 registry: CollectorRegistry | None = None) -> None:
        self.nc, self.node_id, self.region = nc, node_id, region
        self.accounts, self.delivery, self.members = accounts, delivery, members
        self.secret, self.sessions_of_domain = secret, sessions_of_domain
        self.metrics = MoveMetrics(registry)
        self._pulls = asyncio.Semaphore(MAX_PULLS)
        self._epochs: OrderedDict[str, int] = OrderedDict()
        self._owners_kv: dict[str, object] = {}     # source region -> its account_owners bucket
        # (move, account, pass, start) -> the copy job answering it, until its result is taken
        self._pull_jobs: OrderedDict[tuple, asyncio.Task] = OrderedDict()
        self.tasks: set[asyncio.Task] = set()
        self._subs: list = []

    async def start(self) -> None:
        self._subs = [
            await self.nc.subscribe(names.domain_move_requests_of(self.region), queue=names.QUEUE_DOMAIN_MOVE,
                                    cb=self._on_question),
            *[await self.nc.subscribe(names.mailstore_move_subject(self.node_id, verb), cb=self._on_peer)
              for verb in names.MOVE_VERBS],
        ]

    async def stop(self) -> None:
        await unsubscribe_all(self._subs)
        self._subs = []
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5.0)
        for job in self._pull_jobs.values():
            job.cancel()
        self._pull_jobs.clear()

    async def _on_question(self, msg) -> None:
        self._spawn(msg, peer=False)

    async def _on_peer(self, msg) -> None:
        self._spawn(msg, peer=True)

    def _spawn(self, msg, peer: bool) -> None:
        # one task per question: a long pull must not hold up a sessions count
        task = asyncio.create_task(self._answer(msg, peer), name="domain move question")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)   # _answer logs and answers every failure

    async def _answer(self, msg, peer: bool) -> None:
        verb = msg.subject.rpartition(".")[2]
        result = "ok"
        with tracer.start_as_current_span(f"mailstore domain move {verb}", context=extract_context(msg.headers),
                                          attributes={"colony.move.peer": peer}):
            try:
                kind = _REQUESTS.get(verb)
                if kind is None:
                    raise Refused(f"unknown question {verb!r}")
                try:
                    request = kind.model_validate_json(msg.data)
                except ValidationError as exc:
                    raise Refused(f"bad {verb} request: {exc.errors()[0]['msg']}") from None
                reply: mr.BaseModel = await self._serve(verb, request, msg.data, peer)
            except Refused as exc:
                result, reply = "refused", mr.ErrorReply(error=str(exc)[:500])
            except Exception as exc:
                log.exception("domain move %s failed", verb)
                result, reply = "error", mr.ErrorReply(error=f"{type(exc).__name__}: {str(exc)[:300]}")
        self.metrics.requests.labels(verb if verb in _REQUESTS else "unknown", result).inc()
        if result != "ok":
            log.info("domain move %s answered: %s", verb, reply.error)
        try:
            await msg.respond(reply.model_dump_json().encode())
        except Exception as exc:
            log.warning("could not answer a domain move %s: %s", verb, exc)

    async def _serve(self, verb: str, request, raw: bytes, peer: bool) -> mr.BaseModel:
        region_of_role = request.target if verb == names.MOVE_PULL else request.source
        if region_of_role != self.region:
            raise Refused(f"{verb} is asked of region {region_of_role}, this is {self.region}")
        self._fence(request)
        await self._check_directory(verb, request)
        if verb == names.MOVE_PULL:
            return await self._pull(request, raw, peer)
        if verb == names.MOVE_SESSIONS:
            return await self._sessions(request, raw, peer)
        return await self._remove(request, raw, peer)

    def _fence(self, request) -> None:
        newest = self._epochs.get(request.move_id, 0)
        if request.epoch < newest:
            raise Refused(f"controller epoch {request.epoch} is older than {newest}, already seen for this move")
        self._epochs[request.move_id] = request.epoch
        self._epochs.move_to_end(request.move_id)
        while len(self._epochs) > EPOCHS_KEPT:
            self._epochs.popitem(last=False)

    async def _check_directory(self, verb: str, request) -> None:
        entry = await self.accounts.directory.domain(request.domain)
        move = entry.move if entry is not None else None
        if move is None or move.move_id != request.move_id:
            raise Refused(f"{request.domain} has no move {request.move_id} in this region's directory (yet)")
        if verb == names.MOVE_PULL and move.phase in ("flipped", "done", "cancelled"):
            raise Refused(f"the move of {request.domain} is {move.phase}: its mailboxes are the target's now")
        if verb == names.MOVE_REMOVE and (move.phase not in ("flipped", "done") or entry.home_region != request.target):
            raise Refused(f"{request.domain} is not homed in {request.target} yet (phase {move.phase}); "
                          "its copy here is still the one in use")

    # --- pull (the target region) ------------------------------------------------------------

    async def _pull(self, request: mr.PullRequest, raw: bytes, peer: bool) -> mr.PullReply:
        if self.secret is None:
            raise Refused("this mail store has no cluster secret: it cannot reach the source's inner listener")
        address = request.address.lower()
        if address.rpartition("@")[2] != request.domain.lower():
            raise Refused(f"{address} is not of {request.domain}")
        where = await self.delivery.locate(address)
        if where.startswith("!"):
            raise Refused(f"{address}: {where[1:]}")
        if where != self.node_id:
            if peer:  # passed on once already: ownership moved meanwhile; the controller asks again
                raise Refused(f"{address} is owned by {where} now")
            return await self._pass_on(where, names.MOVE_PULL, raw, mr.PullReply, mr.PULL_PASS_ON_TIMEOUT)
        key = (request.move_id, address, request.copy_pass, request.from_position)
        job = self._pull_jobs.get(key)
        if job is None or (job.done() and (job.cancelled() or job.exception() is not None)):
            if sum(not j.done() for j in self._pull_jobs.values()) >= PULL_JOBS_KEPT:
                raise Refused(f"{PULL_JOBS_KEPT} pulls under way on {self.node_id}; ask again later")
            job = asyncio.create_task(self._pull_job(request, address), name=f"domain move pull {address}")
            job.add_done_callback(_retrieve)
            self._pull_jobs[key] = job
            while len(self._pull_jobs) > PULL_JOBS_KEPT:   # the oldest finished results nobody asked for
                oldest = next((k for k, j in self._pull_jobs.items() if j.done()), None)
                if oldest is None:
                    break
                del self._pull_jobs[oldest]
        done, _ = await asyncio.wait({job}, timeout=mr.PULL_ANSWER_WITHIN)
        if not done:
            raise Refused(f"pulling {address} (pass {request.copy_pass}) is still under way on {self.node_id}; "
                          "ask again for its result")
        if self._pull_jobs.get(key) is job:
            del self._pull_jobs[key]    # a result is given once; a later question pulls again
        if job.cancelled():
            raise Refused(f"the pull of {address} was cancelled ({self.node_id} is stopping)")
        return job.result()

    async def _pull_job(self, request: mr.PullRequest, address: str) -> mr.PullReply:
        lease = self.accounts.ownership.holding(address)
        if lease is None:
            raise Refused(f"{address}: our lease lapsed")
        async with self._pulls:
            acct = await self.accounts.get(address, lease)
            async with acct.lock:
                if self.accounts.open.get(address) is not acct:
                    raise Refused(f"{address} was closed meanwhile")
                host, port = await self._source_store(request.source, address)
                client = X.ExportClient(host, port, self.secret, address)
                try:
                    report = await X.pull_into(client, acct.mail)
                except X.NoSuchAccount:
                    # nothing stored in the source (it never got mail): an empty copy, verified
                    empty = await asyncio.to_thread(transfer.target_digest, acct.mail, set())
                    return mr.PullReply(source_messages=0, target_messages=0, source_digest=empty.sha256,
                                        target_digest=empty.sha256, source_position=0)
                except X.ExportError as exc:
                    raise Refused(f"pulling {address} from {request.source}: {exc}") from None
                acct.last_used = self.accounts.clock()
        log.info("pulled %s from %s (pass %d): %d appended, %d flags, %d expunged, %d colleagues' \\Seen records; %s",
                 address, request.source, request.copy_pass, report.merge.appended, report.merge.flags_changed,
                 report.merge.expunged, report.merge.seen_changed, "verified" if report.verified else "NOT verified")
        return mr.PullReply(source_messages=report.source.messages, target_messages=report.target.messages,
                            source_digest=report.source.sha256, target_digest=report.target.sha256,
                            source_position=report.merge.source_position)

    async def _source_store(self, region: str, address: str) -> tuple[str, int]:
        """host, port of the source region's store to pull ``address`` from: its owner, else the
        one placement would give it (any store of a region reads its shared storage)."""
        domain = names.js_domain(region)
        try:
            records = await read_nodes(self.nc, domain, REMOTE_TIMEOUT)
            stores = {r.id: r.addresses["imap-inner"] for r in records
                      if r.role == Role.MAILSTORE and r.state == NodeState.READY and "imap-inner" in r.addresses}
            if not stores:
                raise Refused(f"region {region} has no READY mail store with an inner listener")
            kv = self._owners_kv.get(region)
            if kv is None:
                kv = await self.nc.jetstream(domain=domain, timeout=REMOTE_TIMEOUT).key_value(
                    names.BUCKET_ACCOUNT_OWNERS)
                self._owners_kv[region] = kv
            seen = await read_lease(kv, names.account_owner_key(address))
        except Refused:
            raise
        except Exception as exc:   # the link is cut, the source's bus is busy: ask again later
            raise Refused(f"region {region} could not be read: {type(exc).__name__}: {exc}") from None
        holder = seen.record.holder if seen is not None and seen.record.holder in stores else place(address, stores)
        host, _, port = stores[holder].rpartition(":")
        return host, int(port)

    # --- sessions and remove (the source region) ----------------------------------------------

    async def _sessions(self, request: mr.SessionsRequest, raw: bytes, peer: bool) -> mr.SessionsReply:
        own = self.sessions_of_domain(request.domain)
        if peer:
            return mr.SessionsReply(sessions=own, accounts_held=0)
        answers = await self._ask_peers(names.MOVE_SESSIONS, raw, mr.SessionsReply)
        held = await self._held(request.domain)
        return mr.SessionsReply(sessions=own + sum(a.sessions for a in answers), accounts_held=held)

    async def _remove(self, request: mr.RemoveRequest, raw: bytes, peer: bool) -> mr.RemoveReply:
        closed = await self._close_domain(request.domain)
        if peer:
            return mr.RemoveReply(removed=closed)
        await self._ask_peers(names.MOVE_REMOVE, raw, mr.RemoveReply)
        layout = await self.accounts.directory.layout(request.domain)
        removed = await asyncio.to_thread(_remove_sync, self.accounts.root, request.domain,
                                          [a.lower() for a in request.accounts], layout)
        log.warning("domain %s moved to %s: removed its copy here (%d accounts)", request.domain, request.target,
                    removed)
        return mr.RemoveReply(removed=removed)

    async def _close_domain(self, domain: str) -> int:
        """Close this store's accounts of ``domain`` and release their leases (before the
        storage goes, so no handle writes into a deleted directory)."""
        suffix = "@" + domain.lower()
        mine = [a for a in {*self.accounts.open, *self.accounts.ownership.leases} if a.lower().endswith(suffix)]
        for address in mine:
            await self.accounts.close(address, "domain moved to another region")
        return len(mine)

    async def _held(self, domain: str) -> int:
        return await asyncio.to_thread(_count_accounts, self.accounts.root, domain)

    async def _ask_peers(self, verb: str, raw: bytes, kind: type[mr.Reply]) -> list[mr.Reply]:
        peers = [m for m in self.members.ready if m != self.node_id]

        async def ask(peer: str) -> mr.Reply | None:
            try:
                msg = await self.nc.request(names.mailstore_move_subject(peer, verb), raw, timeout=PEER_TIMEOUT,
                                            headers=inject_headers())
            except NoRespondersError:
                return None   # its connection is gone: it has no sessions and holds no account
            except (NatsTimeoutError, asyncio.TimeoutError):
                raise Refused(f"mail store {peer} did not answer") from None
            try:
                return mr.decode_reply(msg.data, kind)
            except mr.MoveRequestError as exc:
                raise Refused(f"mail store {peer}: {exc}") from None

        return [a for a in await asyncio.gather(*(ask(p) for p in peers)) if a is not None]

    async def _pass_on(self, peer: str, verb: str, raw: bytes, kind: type[mr.Reply], timeout: float) -> mr.Reply:
        try:
            msg = await self.nc.request(names.mailstore_move_subject(peer, verb), raw, timeout=timeout,
                                        headers=inject_headers())
        except (NoRespondersError, NatsTimeoutError, asyncio.TimeoutError) as exc:
            raise Refused(f"the owner {peer} did not answer: {type(exc).__name__}") from None
        try:
            return mr.decode_reply(msg.data, kind)
        except mr.MoveRequestError as exc:
            raise Refused(str(exc)) from None


def _retrieve(job: asyncio.Task) -> None:
    """A pull job's failure is answered to whoever asks next (or dropped with the job):
    retrieving it here keeps asyncio from logging it as never retrieved."""
    if not job.cancelled():
        job.exception()


# --- storage (worker threads) -----------------------------------------------------------------

def _domain_dirs(root: Path, domain: str) -> list[Path]:
    """The domain's directory under every domain-level foldering (an interrupted switch may
    have left accounts under another)."""
    dirs = {domain_dir(root, domain, StorageLayout(domain_levels=levels)) for levels in (0, 1, 2)}
    return sorted(d for d in dirs if d.is_dir())


def _count_accounts(root: Path, domain: str) -> int:
    return sum(_count_accounts_under(top) for top in _domain_dirs(root, domain))


def _remove_sync(root: Path, domain: str, accounts: list[str], layout: StorageLayout) -> int:
    removed = 0
    for address in accounts:
        name, _ = split_address(address)
        found = find_account(root, domain, name, layout)
        if found is None:
            continue
        paths = found[0]
        for small in (paths.settings_file, paths.info_file):   # under fast/ they live elsewhere
            if paths.account_dir not in small.parents:
                small.unlink(missing_ok=True)
        shutil.rmtree(paths.account_dir, ignore_errors=True)
        removed += 1
    # accounts the request did not name (created in the source after the copy began, with no
    # mail of their own) go with the domain's directory
    for top in _domain_dirs(root, domain):
        removed += _count_accounts_under(top)
        shutil.rmtree(top, ignore_errors=True)
    return removed


def _count_accounts_under(top: Path) -> int:
    count = 0
    for _here, dirs, _files in os.walk(top):
        count += sum(1 for d in dirs if d.endswith(ACCOUNT_SUFFIX))
        dirs[:] = [d for d in dirs if not d.endswith(ACCOUNT_SUFFIX)]  # never walk into a mailbox
    return count
