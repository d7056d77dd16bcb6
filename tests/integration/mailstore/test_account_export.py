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
