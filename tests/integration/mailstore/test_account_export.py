"""An account's mail pulled from a real mail store process over its ``imap-inner`` listener
(``colony.contracts.account_export``), merged into another storage root as the target
region's owner would: a copy, a repeat that changes nothing, a catch-up after new mail and a
flag change in the source, verification; forged and unknown requests refused."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)

from colony.bus import names  # noqa: E402
from colony.contracts import account_export as X  # noqa: E402
from colony.contracts import handoff  # noqa: E402
from colony.storage.mailbox import AccountMail  # noqa: E402

BOB = f"bob@{DOMAIN}"
pytestmark = pytest.mark.slow


@pytest.fixture
async def source(world, tmp_path):
    secret_file = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret_file)
    await world.domain()
    await world.account(BOB)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret_file), COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    host, _, port = view.addresses["imap-inner"].rpartition(":")
    yield world, host, int(port), handoff.load_secret(secret_file)


def _inbox_keys(mail: AccountMail) -> list[str]:
    return sorted(m.key for m in mail.state.box("INBOX").messages.values())


async def test_pull_copy_repeat_catch_up_and_verify(source, tmp_path):
    world, host, port, secret = source
    ids = [await world.publish([BOB], size=5000 + i) for i in range(5)]
    await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB) == {i: 1 for i in ids}), 60,
                     "five messages in bob's INBOX")

    target = AccountMail(tmp_path / "target" / "bob", epoch=1)
    target.open()
    try:
        first = await X.pull_into(X.ExportClient(host, port, secret, BOB), target)
        assert first.verified and first.source.messages == 5
        assert first.merge.appended == 5
        assert [k.split("/")[0] for k in _inbox_keys(target)] == sorted(f"move:{i}" for i in ids)
        bodies = {target.body("INBOX", uid) for uid in target.state.box("INBOX").messages}
        assert all(len(b) > 5000 for b in bodies) and len(bodies) == 5

        again = await X.pull_into(X.ExportClient(host, port, secret, BOB), target)
        assert again.verified
        assert (again.merge.appended, again.merge.flags_changed, again.merge.expunged) == (0, 0, 0)
        assert again.target == first.target

        later = await world.publish([BOB])
        await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB).get(later) == 1), 60, "a sixth message")
        third = await X.pull_into(X.ExportClient(host, port, secret, BOB), target)
        assert third.verified and third.source.messages == 6
        assert third.merge.appended == 1 and third.merge.expunged == 0
        assert third.merge.source_position > first.merge.source_position
    finally:
        target.close()


async def test_a_pull_broken_off_midway_is_finished_by_pulling_again(source, tmp_path):
    world, host, port, secret = source
    ids = [await world.publish([BOB], size=1000 * (i + 1)) for i in range(4)]
    await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB) == {i: 1 for i in ids}), 60,
                     "four messages in bob's INBOX")
    target = AccountMail(tmp_path / "target" / "bob", epoch=1)
    target.open()
    try:
        # the puller takes bodies up to the second-largest only: the largest breaks the pull off
        sizes = sorted(m.size for m in world.state(BOB).box("INBOX").messages.values())
        with pytest.raises(X.ExportError):
            await X.pull_into(X.ExportClient(host, port, secret, BOB, max_body=sizes[-2]), target, batch=1)
        partial = len(target.state.box("INBOX").messages)
        assert partial < 4
        done = await X.pull_into(X.ExportClient(host, port, secret, BOB), target, batch=1)
        assert done.verified and done.source.messages == 4
        assert done.merge.appended == 4 - partial
        assert len(target.state.box("INBOX").messages) == 4
    finally:
        target.close()


async def test_forged_unknown_and_oversized_are_refused(source, tmp_path):
    world, host, port, secret = source
    with pytest.raises(X.ExportError, match="NO Bad export"):
        await X.ExportClient(host, port, b"not the cluster secret!!", BOB).open()
    with pytest.raises(X.ExportError, match="NO No such account"):
        await X.ExportClient(host, port, secret, f"nobody@{DOMAIN}").open()

    mid = await world.publish([BOB], size=4000)
    await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB).get(mid) == 1), 60, "a message")
    client = X.ExportClient(host, port, secret, BOB, max_body=1000)
    exported = await client.open()
    try:
        name = next(iter(exported.state.body_refs))
        with pytest.raises(X.ExportError, match="at most 1000"):
            await client.body(name)
    finally:
        await client.close()

    # a body the exported state does not name is never read, whatever the path
    client = X.ExportClient(host, port, secret, BOB)
    await client.open()
    try:
        with pytest.raises(X.ExportError, match="NO No such body"):
            await client.body("not-a-body")
    finally:
        await client.close()


async def test_a_large_body_of_the_object_store_is_served_to_another_region_s_store(source):
    """``mailbody``: a job sent on to another region with its large body left here; that
    region's store fetches the body by name.  Gone for good is told apart from a failure."""
    world, host, port, secret = source
    body = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * (300 * 1024)
    store = await world.nc.jetstream().object_store(names.OBJECT_MAIL_BODIES)
    await store.put("m-large-1", body)
    assert await X.fetch_mail_body(X.ExportClient(host, port, secret, DOMAIN), "m-large-1") == body
    with pytest.raises(X.NoSuchBody):
        await X.fetch_mail_body(X.ExportClient(host, port, secret, DOMAIN), "m-never-stored")
    with pytest.raises(X.ExportError, match="NO Bad mail body"):
        await X.fetch_mail_body(X.ExportClient(host, port, b"not the cluster secret!!", DOMAIN), "m-large-1")
    for name in ("../../etc/passwd", ".hidden"):
        with pytest.raises(X.ExportError, match="NO Bad request") as raised:
            await X.fetch_mail_body(X.ExportClient(host, port, secret, DOMAIN), name)
        assert not isinstance(raised.value, X.NoSuchBody)
    with pytest.raises(X.ExportError, match="at most 1000"):
        await X.fetch_mail_body(X.ExportClient(host, port, secret, DOMAIN, max_body=1000), "m-large-1")


async def test_an_export_is_not_counted_as_an_imap_session(source):
    """An export arrives on imap-inner like a hand-off, but it is another store pulling an
    account: the IMAP sessions gauge (subscribers) stays at 0, the exports gauge counts it."""
    import urllib.request

    world, host, port, secret = source
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    mid = await world.publish([BOB])   # the account exists on disk once it has mail
    await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB).get(mid) == 1), 60, "a message")

    async def metrics(*wanted: str):
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{view.addresses['ops']}/metrics", timeout=10).read().decode())
        return text if all(w in text.splitlines() for w in wanted) else None

    client = X.ExportClient(host, port, secret, BOB)
    await client.open()
    try:
        await wait_until(lambda: metrics("colony_mailstore_account_exports_open 1.0",
                                         "colony_mailstore_imap_sessions 0.0"), 30, "the export counted apart")
    finally:
        await client.close()
    await wait_until(lambda: metrics("colony_mailstore_account_exports_open 0.0",
                                     "colony_mailstore_imap_sessions 0.0"), 30, "the export to end")


async def test_a_colleagues_own_seen_is_carried_by_the_pull(world, tmp_path):
    """bob shares his INBOX with alice, who reads two messages over IMAP on the real store:
    her \\Seen is a seen record in bob's journal.  The pull carries it to the copies, a
    repeat writes nothing, and her clearing one in the source follows on the next pull."""
    from imapclient import IMAPClient

    from colony.bus import names
    from colony.contracts.auth import AuthCheckReply, AuthCheckRequest, AuthFailure

    alice, password = f"alice@{DOMAIN}", "s3cret"

    async def answer(msg):
        req = AuthCheckRequest.from_bytes(msg.data)
        ok = req.user.lower() in (alice, BOB) and req.password == password
        await msg.respond((AuthCheckReply.granted(req.user.lower(), DOMAIN, {}) if ok
                           else AuthCheckReply.refused(AuthFailure.INVALID)).to_bytes())

    sub = await world.nc.subscribe(names.AUTH_CHECK, cb=answer)
    secret_file = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret_file)
    await world.domain()
    await world.account(BOB)
    await world.account(alice)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret_file), COLONY_IMAP_DIRECT_LOGIN="true",
                COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    host, _, port = view.addresses["imap-inner"].rpartition(":")
    ihost, _, iport = view.addresses["imap-direct"].rpartition(":")
    secret = handoff.load_secret(secret_file)
    ids = [await world.publish([BOB]) for _ in range(3)]
    await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB) == {i: 1 for i in ids}), 60, "three messages")

    def imap(user: str, work):
        client = IMAPClient(ihost, int(iport), ssl=False, timeout=60)
        try:
            client.login(user, password)
            return work(client)
        finally:
            client.logout()

    def read_two(client):
        client.select_folder(f"Other Users/{BOB}/INBOX")
        uids = sorted(client.search())
        client.add_flags(uids[:2], [b"\\Seen"])
        return uids

    await asyncio.to_thread(imap, BOB, lambda c: c.setacl("INBOX", alice, "lrs"))
    uids = await asyncio.to_thread(imap, alice, read_two)

    def alice_seen(state) -> set[str]:
        box = state.box("INBOX")
        p = box.private.get(alice)
        return {box.messages[u].key.removeprefix("move:") for u in (p.seen if p else ())}

    await wait_until(lambda: asyncio.sleep(0, len(alice_seen(world.state(BOB))) == 2), 30, "alice's seen records")
    target = AccountMail(tmp_path / "target" / "bob", epoch=1)
    target.open()
    try:
        first = await X.pull_into(X.ExportClient(host, int(port), secret, BOB), target)
        assert first.verified and first.merge.appended == 3 and first.merge.seen_changed == 1
        assert alice_seen(target.state) == alice_seen(world.state(BOB))
        assert not any(m.flags for m in target.state.box("INBOX").messages.values())   # bob's own: unread

        again = await X.pull_into(X.ExportClient(host, int(port), secret, BOB), target)
        assert again.verified and (again.merge.appended, again.merge.seen_changed) == (0, 0)

        def unread_one(client):
            client.select_folder(f"Other Users/{BOB}/INBOX")
            client.remove_flags(uids[:1], [b"\\Seen"])
        await asyncio.to_thread(imap, alice, unread_one)
        await wait_until(lambda: asyncio.sleep(0, len(alice_seen(world.state(BOB))) == 1), 30, "alice's unread")
        third = await X.pull_into(X.ExportClient(host, int(port), secret, BOB), target)
        assert third.verified and third.merge.seen_changed == 1
        assert alice_seen(target.state) == alice_seen(world.state(BOB))
    finally:
        target.close()
        await sub.unsubscribe()
