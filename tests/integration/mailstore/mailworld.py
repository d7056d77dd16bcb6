"""Mailstores on a real nats-server, fed MAIL messages directly (no SMTP edge needed).

(A module of its own, not conftest.py: tests elsewhere import their folder's ``conftest`` by
name, and a second one on ``sys.path`` would shadow it.)  Test modules import ``world``."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from nats.errors import TimeoutError as NatsTimeout

from colony.bus import names
from colony.bus.connection import connect
from colony.bus.schema import ensure_schema
from colony.contracts.mail import InboundMail, MailRecipient
from colony.settings import Settings
from colony.storage.layout import StorageLayout, find_account
from colony.storage.mailbox import read_state

# Short, production-mechanism timings (the same keys an operator would set).
MAILSTORE_ENV = {
    "COLONY_ACCOUNT_LEASE_TTL": "4",
    "COLONY_ACCOUNT_RENEW_INTERVAL": "0.5",
    "COLONY_ACCOUNT_LEASE_SAFETY_MARGIN": "1.5",
    "COLONY_MAILSTORE_FORWARD_TIMEOUT": "2",
    "COLONY_QUEUE_ACK_WAIT": "6",
    "COLONY_QUEUE_MAX_DELIVER": "50",
    "COLONY_QUEUE_RETRY_BACKOFF": "0.5,1",
    "COLONY_MAIL_SEGMENT_MAX_BYTES": "65536",  # owners rotate to new epochs during the bursts too
}
DOMAIN = "example.com"


class MailWorld:
    """Provisioning (the directory entries the admin API would write), publishing, reading."""

    def __init__(self, cluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.nc = None

    async def setup(self) -> None:
        self.nc = await connect(Settings(nats_url=self.cluster.nats_url), name="mail-test")
        await ensure_schema(self.nc.jetstream(), Settings(nats_url=self.cluster.nats_url))
        self.directory = await self.nc.jetstream().key_value(names.BUCKET_DIRECTORY)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    def start(self, node_id: str, **env: str):
        return self.cluster.start("mailstore", node_id, COLONY_STORAGE_DIR=str(self.root), **{**MAILSTORE_ENV, **env})

    async def start_ready(self, *node_ids: str, timeout: float = 30) -> None:
        """Start the mail stores ``node_ids`` side by side, then wait until each is READY."""
        for node_id in node_ids:
            self.start(node_id)
        for node_id in node_ids:
            await self.cluster.wait_state(node_id, "READY", timeout=timeout)

    async def domain(self, name: str = DOMAIN, **storage) -> None:
        await self.directory.put(names.directory_key(names.AGG_DOMAIN, name), orjson.dumps(
            {"kind": "domain", "name": name, "storage": {"account_foldering": "none", "domain_foldering": False,
                                                          "fast_storage_index": None, **storage}}))

    async def account(self, address: str, **fields) -> None:
        name, _, domain = address.partition("@")
        await self.directory.put(names.directory_key(names.AGG_ADDRESS, address), orjson.dumps(
            {"kind": "account", "address": address, "domain": domain, "name": name, **fields}))

    async def publish(self, recipients: list[str], message_id: str | None = None, size: int = 200,
                      text: bytes | None = None) -> str:
        """A message for ``recipients``: a header and ``size`` octets of body, or the header's
        first lines followed by ``text`` (the rest of the header, a blank line, a body)."""
        message_id = message_id or uuid.uuid4().hex
        domain = recipients[0].rpartition("@")[2]
        head = f"Return-Path: <sender@remote.test>\r\nMessage-Id: <{message_id}@remote.test>\r\n".encode()
        body = head + (text if text is not None else b"Subject: test\r\n\r\n" + b"x" * size + b"\r\n")
        mail = InboundMail(message_id=message_id, domain=domain, mail_from="sender@remote.test",
                           recipients=[MailRecipient(mailbox=r, original=r) for r in recipients],
                           size=len(body), edge_node="test", body=body)
        # As an edge publishes: in the first recipient's partition (its owner fetches it).
        subject = names.mail_subject("local", domain, names.mail_partition(recipients[0]))
        await self.nc.jetstream().publish(subject, mail.encode(),
                                          headers={"Nats-Msg-Id": mail.msg_id()}, timeout=10)
        return message_id

    def state(self, address: str):
        name, _, domain = address.partition("@")
        found = find_account(self.root, domain, name, StorageLayout())
        if found is None:
            return None
        return read_state(found[0].mail_dir)

    def stored_ids(self, address: str) -> Counter:
        """message id -> how many copies the INBOX holds (read as the next owner would)."""
        state = None
        for _ in range(20):  # the owner may replace a snapshot while we read
            try:
                state = self.state(address)
                break
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
        if state is None or "INBOX" not in state.by_name:  # not created, or claimed a moment ago
            return Counter()
        inbox = state.box("INBOX")
        return Counter(m.key.split("/")[0] for m in inbox.messages.values())

    async def owner(self, address: str) -> str | None:
        return await account_owner(self.nc, address)



async def account_owner(nc, address: str) -> str | None:
    """The node id holding ``address``'s ownership lease, or None (no lease, or unreadable)."""
    kv = await nc.jetstream().key_value(names.BUCKET_ACCOUNT_OWNERS)
    try:
        entry = await kv.get(names.account_owner_key(address))
    except Exception:
        return None
    return orjson.loads(entry.value)["holder"] if entry.value else None

@pytest.fixture
async def world(cluster, tmp_path):
    w = MailWorld(cluster, tmp_path / "shared")
    await w.setup()
    yield w
    await w.close()


async def publish_many(world: MailWorld, jobs: list[tuple[list[str], str]], connections: int = 4) -> None:
    """Publish over several connections at once, as several SMTP sessions would."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker():
        nc = await connect(Settings(nats_url=world.cluster.nats_url), name="publisher")
        js = nc.jetstream()
        try:
            while not queue.empty():
                recipients, mid = queue.get_nowait()
                domain = recipients[0].rpartition("@")[2]
                body = f"Message-Id: <{mid}@remote.test>\r\n\r\nhello\r\n".encode()
                mail = InboundMail(message_id=mid, domain=domain, mail_from="s@remote.test",
                                   recipients=[MailRecipient(mailbox=r, original=r) for r in recipients],
                                   size=len(body), edge_node="test", body=body)
                for attempt in range(5):  # as an edge does: retry; Nats-Msg-Id makes it once
                    try:
                        await js.publish(names.mail_subject("local", domain, names.mail_partition(recipients[0])),
                                         mail.encode(),
                                         headers={"Nats-Msg-Id": mail.msg_id()}, timeout=10)
                        break
                    except NatsTimeout:
                        if attempt == 4:
                            raise
        finally:
            await nc.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
