"""A domain move between two real regions (hub, eu and us nats-servers joined by leafnodes,
real mail store processes: one in eu, two in us) whose target mail store is SIGKILLed while
it pulls an account: the account's lease passes to the other us store, which is asked again
and finishes the copy.  Mail keeps arriving at both regions all along (through eu's MAIL for
us, straight into us's MAIL, and on eu's own subject, which eu's store sends on).  Afterwards
us holds every message once with its flags, readable over IMAP, and eu holds nothing.

The test plays the primary's controller as ``colony_controller.controller`` does: the move's
phases written to both regions' directories (what the projection of its events gives), each
followed by the settle time, and its questions asked with the controller's own
``BusMovePort`` and asked again 2 s after a failure.  The kill lands mid-pull for certain: the
source store is SIGSTOPped before the pull is asked, so the owner is found connected to it,
waiting for the account's state, when it is killed.  Every wait's deadline comes from the
timers that bound it (the pull question's timeout, the account lease)."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import nats
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mailstore"))

from cluster_harness import ClusterHarness, wait_until  # noqa: E402
from mailworld import MAILSTORE_ENV, account_owner  # noqa: E402

from colony import domain_move as dm  # noqa: E402
from colony.bus import names  # noqa: E402
from colony.bus.schema import ensure_schema  # noqa: E402
from colony.contracts import handoff  # noqa: E402
from colony.contracts import move_requests as mr  # noqa: E402
from colony.contracts.auth import AuthCheckReply, AuthCheckRequest, AuthFailure  # noqa: E402
from colony.contracts.mail import InboundMail, MailRecipient  # noqa: E402
from colony.natsd import EmbeddedNats  # noqa: E402
from colony.settings import Settings  # noqa: E402
from colony.storage.layout import ACCOUNT_SUFFIX, StorageLayout, find_account  # noqa: E402
from colony.storage.mailbox import read_state  # noqa: E402
from colony_controller.move_port import BusMovePort  # noqa: E402
from tools import free_ports  # noqa: E402

# alone under pytest-xdist: it freezes and kills stores of a three-server, three-store world,
# and its deadlines come from the timers that bound each wait, not from the load of a second test.
pytestmark = [pytest.mark.slow, pytest.mark.alone]

REGIONS = ("eu", "us")
DOMAIN = "move.example"
AMY, BEN, CID = (f"{u}@{DOMAIN}" for u in ("amy", "ben", "cid"))   # cid never gets mail
PASSWORD = "Move-secret-123"
LEASE_TTL = float(MAILSTORE_ENV["COLONY_ACCOUNT_LEASE_TTL"])
SETTLE = 3.0      # the driver's settle time: the stores' directory cache (2 s) has seen the phase
RETRY = 2.0       # the controller asks a failed question again after this long
# A pull asked again after a store died with it: the question's timeout, the dead owner's
# lease running out, retries, and the copy itself on a loaded machine.
PULL_DEADLINE = mr.PULL_ASK_TIMEOUT + 2 * LEASE_TTL + 4 * RETRY + 60


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (tests/tools.py: one the kernel handed out
    for a bind may go to the next outgoing connection before the server binds it)."""
    return free_ports(1)[0]


class Region:
    def __init__(self, name: str, server: EmbeddedNats, root: Path, secret_file: Path) -> None:
        self.name, self.server, self.root, self.secret_file = name, server, root, secret_file
        self.cluster: ClusterHarness | None = None
        self.nc = None

    async def setup(self) -> None:
        """Once the region's server runs (its URL has the port it chose)."""
        self.cluster = ClusterHarness(nats_url=self.server.url, workdir=self.root, identities=self.server.identities,
                                      extra_env={
            "COLONY_REGION": self.name, "COLONY_REGIONS": ",".join(REGIONS), "COLONY_PRIMARY_REGION": "eu",
            "COLONY_STORAGE_DIR": str(self.root / "storage"), "COLONY_CLUSTER_SECRET_FILE": str(self.secret_file),
            "COLONY_IMAP_DIRECT_LOGIN": "true", "COLONY_OUTBOUND_SMTP_PORT": "25", **MAILSTORE_ENV})
        self.nc = await nats.connect(self.server.url, **self.server.client_options("operator"))
        await ensure_schema(self.nc.jetstream(), Settings(nats_url=self.server.url, region=self.name,
                                                          regions=",".join(REGIONS), primary_region="eu"))
        self.directory = await self.nc.jetstream().key_value(names.BUCKET_DIRECTORY)
        await self.nc.subscribe(names.AUTH_CHECK, cb=_auth)

    async def domain(self, home: str, phase: str | None = None) -> None:
        move = {"move_id": "m1", "source": "eu", "target": "us", "phase": phase} if phase else None
        await self.directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(
            {"kind": "domain", "name": DOMAIN, "home_region": home, "move": move,
             "storage": {"account_foldering": "none", "domain_foldering": False, "fast_storage_index": None}}))

    async def account(self, address: str) -> None:
        name, _, domain = address.partition("@")
        await self.directory.put(names.directory_key(names.AGG_ADDRESS, address), orjson.dumps(
            {"kind": "account", "address": address, "domain": domain, "name": name}))

    async def publish(self, to_region: str, rcpt: str, mid: str, size: int = 300) -> None:
        """As an edge of this region publishes mail it accepted for ``to_region``."""
        body = (f"Message-Id: <{mid}@remote.test>\r\nSubject: {mid}\r\n\r\n").encode() + b"x" * size + b"\r\n"
        mail = InboundMail(message_id=mid, domain=DOMAIN, mail_from="s@remote.test",
                           recipients=[MailRecipient(mailbox=rcpt, original=rcpt)], size=len(body),
                           edge_node=f"edge-{self.name}", body=body)
        await self.nc.jetstream().publish(names.mail_subject(to_region, DOMAIN, names.mail_partition(rcpt)),
                                          mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()}, timeout=10)

    def stored(self, address: str) -> dict[str, int]:
        """message id -> copies in the account's INBOX on this region's storage (as the next
        owner would read it; a copied message's key is ``move:<delivery key>``)."""
        name, _, domain = address.partition("@")
        for _ in range(20):   # the owner may replace a snapshot while we read
            try:
                found = find_account(self.root / "storage", domain, name, StorageLayout())
                if found is None:
                    return {}
                state = read_state(found[0].mail_dir)
                break
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
        else:
            return {}
        if "INBOX" not in state.by_name:
            return {}
        out: dict[str, int] = {}
        for m in state.box("INBOX").messages.values():
            mid = m.key.removeprefix("move:").split("/")[0]
            out[mid] = out.get(mid, 0) + 1
        return out

    async def owner(self, address: str) -> str | None:
        return await account_owner(self.nc, address)


async def _auth(msg) -> None:
    req = AuthCheckRequest.from_bytes(msg.data)
    ok = req.user.lower() in (AMY, BEN, CID) and req.password == PASSWORD
    await msg.respond((AuthCheckReply.granted(req.user.lower(), DOMAIN, {}) if ok
                       else AuthCheckReply.refused(AuthFailure.INVALID)).to_bytes())


@pytest.fixture
async def regions(tmp_path):
    leaf = _free_port()
    hub = EmbeddedNats(tmp_path / "hub", server_name="hub", jetstream_domain=names.HUB_JS_DOMAIN,
                       leafnode_listen=f"127.0.0.1:{leaf}", sync_always=False)
    secret_file = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret_file)
    servers = {r: EmbeddedNats.authenticated(tmp_path / r / "nats", tmp_path / "bus", server_name=r,
                                             jetstream_domain=names.js_domain(r),
                                             leafnode_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
                                             leafnode_deny=names.REGION_LOCAL_SUBJECTS, sync_always=False)
               for r in REGIONS}
    made = {r: Region(r, servers[r], tmp_path / r, secret_file) for r in REGIONS}
    hub.start()
    try:
        for server in servers.values():
            server.start()
        for region in made.values():
            await region.setup()
        yield made
    finally:
        for region in made.values():
            if region.cluster is not None:
                await region.cluster.close()
            if region.nc is not None:
                await region.nc.close()
        for server in (*servers.values(), hub):
            server.stop()


def _connected_to(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` is open (the owner's pull reaching the
    source store's inner listener: nothing else connects to it here)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rpartition(":")[2], 16) == port:
                return True
    return False


def _imap_read(address: str, port: int) -> dict[str, set[str]]:
    """message id -> flags of every message in the account's INBOX, over IMAP (a message id
    seen twice fails: a duplicate)."""
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port, ssl=False, timeout=60)
    try:
        client.login(address, PASSWORD)
        client.select_folder("INBOX", readonly=True)
        out: dict[str, set[str]] = {}
        fetched = client.fetch(client.search(), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        for data in fetched.values():
            mid = data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip().removeprefix("Subject: ")
            assert mid not in out, f"{mid} twice in {address}'s INBOX"
            out[mid] = {f.decode() for f in data[b"FLAGS"]} - {"\\Recent"}
        return out
    finally:
        client.logout()


def _imap_flag(address: str, port: int, mids: list[str], flags: list[bytes]) -> None:
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port, ssl=False, timeout=60)
    try:
        client.login(address, PASSWORD)
        client.select_folder("INBOX")
        for mid in mids:
            uids = client.search(["SUBJECT", mid])
            assert len(uids) == 1, (mid, uids)
            client.add_flags(uids, flags)
    finally:
        client.logout()


async def test_a_target_store_sigkilled_mid_pull_and_the_next_owner_finishes_the_move(regions):
    eu, us = regions["eu"], regions["us"]
    for region in (eu, us):
        await region.domain(home="eu")
        for address in (AMY, BEN, CID):
            await region.account(address)
    source = eu.cluster.start("mailstore", "mailstore-1")
    for n in (1, 2):
        us.cluster.start("mailstore", f"mailstore-{n}")
    eu_view = await eu.cluster.wait_state("mailstore-1", "READY", timeout=60)
    for n in (1, 2):
        await us.cluster.wait_state(f"mailstore-{n}", "READY", timeout=60)
    eu_imap = int(eu_view.addresses["imap-direct"].rpartition(":")[2])
    eu_inner = int(eu_view.addresses["imap-inner"].rpartition(":")[2])

    # before the move: mail in eu, some of it flagged by its user there
    sent: dict[str, list[str]] = {AMY: [], BEN: [], CID: []}
    for i in range(40):
        rcpt = AMY if i % 4 else BEN
        mid = f"before-{i}-{uuid.uuid4().hex[:8]}"
        await eu.publish("eu", rcpt, mid, size=20_000)
        sent[rcpt].append(mid)
    await wait_until(lambda: _now(all(eu.stored(a) == {m: 1 for m in sent[a]} for a in (AMY, BEN))), 90,
                     "the mail before the move stored in eu")
    flagged = sent[AMY][:3]
    await asyncio.to_thread(_imap_flag, AMY, eu_imap, flagged, [b"\\Flagged", b"\\Seen"])

    # mail keeps arriving at both regions while the domain moves
    stop = asyncio.Event()

    async def keep_sending():
        i = 0
        while not stop.is_set():
            rcpt = (AMY, BEN)[i % 2]
            mid = f"during-{i}-{uuid.uuid4().hex[:8]}"
            match i % 3:
                case 0:
                    await eu.publish("us", rcpt, mid)    # eu's edge, after routing: for us, sourced there
                case 1:
                    await us.publish("us", rcpt, mid)    # us's edge
                case 2:
                    await eu.publish("eu", rcpt, mid)    # an eu edge that missed routing: eu's store sends it on
            sent[rcpt].append(mid)
            i += 1
            await asyncio.sleep(0.3)   # pacing, not waiting for anything
    sender = asyncio.create_task(keep_sending())

    controller = await nats.connect(eu.server.url, **eu.server.client_options("controller"))
    port = BusMovePort(controller, lambda d: _now([AMY, BEN, CID]), epoch=lambda: 1)
    move = dm.Move(domain=DOMAIN, move_id="m1", source="eu", target="us", phase=dm.Phase.COPYING,
                   since=datetime.now(timezone.utc))
    failures: list[str] = []

    async def asked(what: str, question, deadline: float):
        """As the controller's driver: a failed question is asked again after RETRY."""
        async def once():
            try:
                return await question()
            except mr.MoveRequestError as exc:
                failures.append(f"{what}: {exc}")
                await asyncio.sleep(RETRY)
                return None
        return await asyncio.wait_for(wait_until(once, deadline, what), deadline + mr.PULL_ASK_TIMEOUT)

    async def copied(address: str, copy_pass: int, start: int, deadline: float = PULL_DEADLINE):
        report = await asked(f"pass {copy_pass} of {address}",
                             lambda: port.copy_account(move, address, copy_pass, start), deadline)
        assert (report.source_messages, report.source_digest) == (report.target_messages, report.target_digest), \
            report   # verified: every source message in the target once, with its flags
        return report

    try:
        for phase in ("routing", "copying"):
            for region in (eu, us):
                await region.domain(home="eu", phase=phase)
            await asyncio.sleep(SETTLE)

        # pass 1 of amy, the kill: the source store paused before the question, so the us
        # owner that takes the account is caught connected to it, waiting for the state
        source.signal(signal.SIGSTOP)
        try:
            pull = asyncio.create_task(copied(AMY, 1, 0))
            await wait_until(lambda: _now(_connected_to(eu_inner)), 60, "a us store pulling amy from eu")
            victim = await us.owner(AMY)
            assert victim is not None
            us.cluster.nodes[victim].signal(signal.SIGKILL)
            assert await asyncio.to_thread(us.cluster.nodes[victim].process.wait, 30) == -signal.SIGKILL
            assert not pull.done()
        finally:
            source.signal(signal.SIGCONT)
        survivor = next(f"mailstore-{n}" for n in (1, 2) if f"mailstore-{n}" != victim)
        amy_1 = await pull
        assert await us.owner(AMY) == survivor   # the lease passed; the survivor pulled
        passes = {AMY: amy_1, BEN: await copied(BEN, 1, 0), CID: await copied(CID, 1, 0)}
        assert passes[CID].source_messages == 0

        # the user's last change in the source before the seal, carried by pass 2
        await asyncio.to_thread(_imap_flag, AMY, eu_imap, [sent[AMY][3]], [b"\\Answered"])
        for region in (eu, us):
            await region.domain(home="eu", phase="sealing")
        await asyncio.sleep(SETTLE)
        for address in (AMY, BEN, CID):
            await copied(address, 2, passes[address].source_position)

        for region in (eu, us):
            await region.domain(home="us", phase="flipped")
        await asyncio.sleep(SETTLE)
        await asked("the source's copy removed", lambda: _true(port.clean_up_source(move, (AMY, BEN, CID))),
                    mr.PULL_ASK_TIMEOUT + 4 * RETRY)
        assert await port.source_cleaned(move)
        for region in (eu, us):
            await region.domain(home="us", phase="done")
        await asyncio.sleep(SETTLE)
    finally:
        stop.set()
        await sender
        await controller.close()

    # every message once in us, none left in eu (its storage, its MAIL)
    want = {a: {m: 1 for m in sent[a]} for a in (AMY, BEN)}
    await wait_until(lambda: _now(all(us.stored(a) == want[a] for a in (AMY, BEN))), 60,
                     f"every message once in us (failures on the way: {failures[-5:]})")
    assert us.stored(CID) == {}
    assert not list((eu.root / "storage").glob(f"**/*{ACCOUNT_SUFFIX}"))

    async def mail_waiting(region: Region) -> bool:
        info = await region.nc.jetstream().stream_info(names.STREAM_MAIL)
        return info.state.messages == 0
    for region in (eu, us):
        await wait_until(lambda r=region: mail_waiting(r), 60, f"{region.name}'s MAIL emptied")

    # readable over IMAP in us, with the flags set in eu
    us_view = await us.cluster.wait_state(survivor, "READY", timeout=30)
    us_imap = int(us_view.addresses["imap-direct"].rpartition(":")[2])

    async def read(address: str):
        try:
            return await asyncio.to_thread(_imap_read, address, us_imap)
        except Exception as exc:   # the dead store's leases of ben and cid lapse first
            failures.append(f"reading {address}: {exc}")
            return None
    amy = await wait_until(lambda: read(AMY), 2 * LEASE_TTL + 30, "amy's INBOX over IMAP in us")
    expected = {m: set() for m in sent[AMY]}
    expected.update({m: {"\\Flagged", "\\Seen"} for m in flagged})
    expected[sent[AMY][3]] = {"\\Answered"}
    assert amy == expected
    ben = await wait_until(lambda: read(BEN), 2 * LEASE_TTL + 30, "ben's INBOX over IMAP in us")
    assert ben == {m: set() for m in sent[BEN]}
    # the question the killed store had in hand failed (it never answered) and was asked again
    assert any(f.startswith(f"pass 1 of {AMY}") for f in failures), failures


async def _now(value):
    return value


async def _true(awaitable) -> bool:
    await awaitable
    return True
