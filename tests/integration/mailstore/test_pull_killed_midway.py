"""A domain move's pull (``colony.contracts.account_export``) interrupted by SIGKILL: of the
pulling process (the target's owner of the account, mid-merge, with records staged and
bodies written but not committed) or of the source mail store (mid-stream).  As the
controller's driver does, the pull is asked again -- by the next owner of the account, under
a new epoch, or by the same owner against another store of the source region -- and it
finishes, verified, with every message in the target exactly once.

The pulling process is a small script around ``pull_into`` into an ``AccountMail`` (the
code a mail store's ``pull`` answer runs under the account's lock); its link to the source
is slowed (a pause before each body) so the kill lands in the middle of the copy, which the
test waits for on the target's committed journal, not on a clock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)

from colony.contracts import account_export as X  # noqa: E402
from colony.contracts import handoff  # noqa: E402
from colony.storage.mailbox import AccountMail, read_state  # noqa: E402

BOB = f"bob@{DOMAIN}"
MESSAGES = 30
pytestmark = pytest.mark.slow

PULLER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from colony.contracts import account_export as X, handoff
    from colony.storage.mailbox import AccountMail

    host, port, secret_file, account, target, epoch, pause = sys.argv[1:]

    class Slow(X.ExportClient):
        async def body(self, name):
            await asyncio.sleep(float(pause))   # a slow link: the kill lands mid-copy
            return await super().body(name)

    async def main():
        mail = AccountMail(Path(target), int(epoch))
        mail.open()
        report = await X.pull_into(Slow(host, int(port), handoff.load_secret(Path(secret_file)), account), mail,
                                   batch=3)
        mail.close()
        print("verified" if report.verified else "NOT verified", report.merge.appended, flush=True)

    asyncio.run(main())
""")


@pytest.fixture
async def source(world, tmp_path):
    secret_file = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret_file)
    await world.domain()
    await world.account(BOB)
    node = world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret_file), COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    ids = [await world.publish([BOB], size=20_000 + i) for i in range(MESSAGES)]
    await wait_until(lambda: asyncio.sleep(0, world.stored_ids(BOB) == {i: 1 for i in ids}), 90,
                     f"{MESSAGES} messages in bob's INBOX")
    host, _, port = view.addresses["imap-inner"].rpartition(":")
    yield world, node, host, int(port), secret_file, ids


def _copies(mail_dir: Path) -> Counter:
    """source message id -> copies in the target's INBOX, as the next owner would read it."""
    state = read_state(mail_dir)
    if "INBOX" not in state.by_name:
        return Counter()
    return Counter(m.key.removeprefix("move:").split("/")[0] for m in state.box("INBOX").messages.values())


async def test_the_pulling_process_killed_midway_and_the_next_owner_pulls_again(source, tmp_path):
    world, _node, host, port, secret_file, ids = source
    target = tmp_path / "target" / "bob"
    script = tmp_path / "puller.py"
    script.write_text(PULLER)

    def puller(epoch: int, pause: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), host, str(port), str(secret_file), BOB, str(target),
                                 str(epoch), str(pause)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    first = puller(1, 0.1)
    try:
        await wait_until(lambda: asyncio.sleep(0, 0 < sum(_copies(target).values()) < MESSAGES - 3), 60,
                         "the first puller part of the way through")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    partial = _copies(target)
    assert 0 < sum(partial.values()) < MESSAGES and set(partial.values()) == {1}

    second = puller(2, 0)    # the account's next owner (a new epoch) is asked again
    out, _ = await asyncio.to_thread(second.communicate, timeout=120)
    assert second.returncode == 0, out.decode(errors="replace")
    verdict, appended = out.decode().split()
    assert verdict == "verified"
    # what the killed puller staged but never committed is copied again, nothing twice
    assert int(appended) == MESSAGES - sum(partial.values())
    assert _copies(target) == {i: 1 for i in ids}


async def test_the_source_store_killed_midway_and_another_source_store_serves_the_pull_again(source, tmp_path):
    world, node, host, port, secret_file, ids = source
    secret = handoff.load_secret(secret_file)
    fetched = 0
    halfway, killed = asyncio.Event(), asyncio.Event()

    class Counting(X.ExportClient):
        async def body(self, name):
            nonlocal fetched
            fetched += 1
            if fetched == MESSAGES // 2:
                halfway.set()
                await killed.wait()    # this body is asked of a source that is gone
            return await super().body(name)

    target = AccountMail(tmp_path / "target" / "bob", epoch=1)
    target.open()
    try:
        pull = asyncio.create_task(X.pull_into(Counting(host, port, secret, BOB), target, batch=3))
        await asyncio.wait_for(halfway.wait(), 60)
        node.signal(signal.SIGKILL)
        assert await asyncio.to_thread(node.process.wait, 30) == -signal.SIGKILL
        killed.set()
        with pytest.raises(X.ExportError, match="broke off"):
            await asyncio.wait_for(pull, 60)
        # staged, never committed: the pulling owner keeps the account open and is asked again
        assert sum(_copies(tmp_path / "target" / "bob").values()) < MESSAGES

        # any store of the source region reads its shared storage (the dead owner's lease may linger)
        world.start("mailstore-2", COLONY_CLUSTER_SECRET_FILE=str(secret_file), COLONY_OUTBOUND_SMTP_PORT="25")
        view = await world.cluster.wait_state("mailstore-2", "READY", timeout=60)
        host2, _, port2 = view.addresses["imap-inner"].rpartition(":")
        again = await X.pull_into(X.ExportClient(host2, int(port2), secret, BOB), target, batch=3)
        assert again.verified and again.source.messages == MESSAGES
        assert Counter(m.key.removeprefix("move:").split("/")[0]
                       for m in target.state.box("INBOX").messages.values()) == {i: 1 for i in ids}
    finally:
        target.close()
    assert _copies(tmp_path / "target" / "bob") == {i: 1 for i in ids}
