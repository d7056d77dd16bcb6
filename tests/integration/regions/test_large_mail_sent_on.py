"""A message over 4 MiB (too large to travel inline between regions) that reaches a domain's
old region after its move's last copy pass -- here after ``done``, when that region's copy is
already removed -- reaches the account in the new home region: the old region's mail store
sends the job on with its ``body_ref`` naming its own region, and the new region's store
fetches the 5 MiB body from it over the signed inner listener (``mailbody``).  Real mail
stores in two regions (eu, us) joined through a hub, as ``colony up --regions`` runs them.

Before, the old region's store kept such a message in its own copy of the account, which
nobody reads any more (issue #11)."""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mailstore"))

from cluster_harness import FAST_TIMINGS, ClusterHarness, wait_until  # noqa: E402
from mailworld import MAILSTORE_ENV, MailWorld  # noqa: E402
from test_regions_bus import SuperCluster  # noqa: E402

from colony.bus import names  # noqa: E402
from colony.contracts import handoff  # noqa: E402
from colony.contracts.mail import CROSS_REGION_MAX_BYTES, InboundMail, MailBodyRef, MailRecipient  # noqa: E402
from colony.storage.layout import StorageLayout, find_account  # noqa: E402

DOMAIN = "moved.example"
BOB = f"bob@{DOMAIN}"
pytestmark = pytest.mark.slow


@pytest.fixture
async def two_regions(tmp_path, monkeypatch):
    # the schema made with the timings the mail stores run with (on an open bus each process
    # applies its own, and a bucket's TTL shortened under its duplicate window is refused)
    for key, value in {**FAST_TIMINGS, **MAILSTORE_ENV}.items():
        monkeypatch.setenv(key, value)
    sc = SuperCluster(tmp_path / "bus")
    await sc.start()
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    clusters = {}
    try:
        for region in ("eu", "us"):
            cluster = ClusterHarness(nats_url=sc.servers[region].url, workdir=tmp_path / region)
            cluster.workdir.mkdir(parents=True)
            clusters[region] = cluster
            directory = await sc.js(region).key_value(names.BUCKET_DIRECTORY)
            # what both regions' directories say once the move of the domain from eu to us is done
            await directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(
                {"kind": "domain", "name": DOMAIN, "home_region": "us",
                 "storage": {"account_foldering": "none", "domain_foldering": False, "fast_storage_index": None},
                 "move": {"move_id": "m1", "source": "eu", "target": "us", "phase": "done"}}))
            await directory.put(names.directory_key(names.AGG_ADDRESS, BOB), orjson.dumps(
                {"kind": "account", "address": BOB, "domain": DOMAIN, "name": "bob"}))
            cluster.start("mailstore", f"mailstore-{region}", COLONY_STORAGE_DIR=str(tmp_path / region / "storage"),
                          COLONY_REGION=region, COLONY_REGIONS="eu,us", COLONY_CLUSTER_SECRET_FILE=str(secret),
                          COLONY_OUTBOUND_SMTP_PORT="25")
        for region, cluster in clusters.items():
            await cluster.wait_state(f"mailstore-{region}", "READY", timeout=90)
        yield sc, clusters, tmp_path
    finally:
        for cluster in clusters.values():
            await cluster.close()
        await sc.close()


def _large_message(message_id: str) -> bytes:
    head = (f"Return-Path: <sender@remote.test>\r\nMessage-Id: <{message_id}@remote.test>\r\n"
            "Subject: the 5 MiB attachment\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    line = os.urandom(57).hex()[:76].encode() + b"\r\n"
    return head + line * (5 * 1024 * 1024 // len(line) + 1)


async def test_a_5_mib_message_reaching_the_old_region_after_the_move_lands_in_the_new_home(two_regions):
    sc, clusters, tmp_path = two_regions
    eu = sc.js("eu")
    message_id = uuid.uuid4().hex
    body = _large_message(message_id)
    assert len(body) > CROSS_REGION_MAX_BYTES
    # As an eu edge whose directory had not seen the move accepted it: the body in eu's
    # object store, the job in eu's MAIL under eu's own subject.
    store = await eu.object_store(names.OBJECT_MAIL_BODIES)
    await store.put(message_id, body)
    mail = InboundMail(message_id=message_id, domain=DOMAIN, mail_from="sender@remote.test",
                       recipients=[MailRecipient(mailbox=BOB, original=BOB)], size=len(body), edge_node="edge-eu",
                       body_ref=MailBodyRef(bucket=names.OBJECT_MAIL_BODIES, name=message_id, size=len(body),
                                            sha256=hashlib.sha256(body).hexdigest()))
    await eu.publish(names.mail_subject("eu", DOMAIN, names.mail_partition(BOB)), mail.encode(),
                     headers={"Nats-Msg-Id": mail.msg_id()}, timeout=10)

    us_copy = MailWorld(clusters["us"], tmp_path / "us" / "storage")

    async def arrived():
        return us_copy.stored_ids(BOB).get(message_id) == 1
    await wait_until(arrived, 90, "the 5 MiB message in bob's INBOX in us")

    state = us_copy.state(BOB)
    (stored,) = [m for m in state.box("INBOX").messages.values() if m.key.startswith(message_id)]
    found = find_account(tmp_path / "us" / "storage", DOMAIN, "bob", StorageLayout())
    assert hashlib.sha256((found[0].mail_dir / "bodies" / stored.body).read_bytes()).digest() == \
        hashlib.sha256(body).digest()
    # nothing kept in eu's removed copy
    assert find_account(tmp_path / "eu" / "storage", DOMAIN, "bob", StorageLayout()) is None
