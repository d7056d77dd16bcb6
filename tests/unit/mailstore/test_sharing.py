"""Shared folders' wire and grant index without a bus: a forwarded call runs against the
owner's journal with the grantee's rights and commits; the index keeps, per grantee, the
owners that grant it something, under concurrent writers (CAS)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from colony.bus import names
from colony.protocols.imap.shared import SharedError
from colony.storage.mailbox import AccountMail, read_state
from colony_mailstore.sharing import GrantIndex, grantees, run_call

ALICE, BOB = "alice@example.com", "bob@example.com"
TEAM = f"Other Users/{ALICE}/Team"


@pytest.fixture
def alice(tmp_path):
    m = AccountMail(tmp_path / "alice", 1, clock=lambda: 1_700_000_000.0)
    m.open()
    m.create_mailbox("Team")
    m.append("Team", b"Subject: one\r\n\r\nbody\r\n")
    m.set_acl("Team", BOB, "lri")
    m.commit()
    yield m
    m.close()


def test_a_forwarded_call_reads_with_the_grantees_rights(alice):
    boxes = run_call(alice, ALICE, BOB, "mailboxes", [])
    assert [b["name"] for b in boxes] == [TEAM]
    assert run_call(alice, ALICE, BOB, "myrights", [TEAM]) == "lri"
    [[uid, flags, _date, size, _modseq]] = run_call(alice, ALICE, BOB, "messages", [TEAM])
    assert base64.b64decode(run_call(alice, ALICE, BOB, "body", [TEAM, uid])).startswith(b"Subject: one")
    with pytest.raises(SharedError, match="NONEXISTENT"):
        run_call(alice, ALICE, "carol@example.com", "messages", [TEAM])    # no grant, no mailbox
    with pytest.raises(SharedError, match="NOPERM"):
        run_call(alice, ALICE, BOB, "expunge", [TEAM, None])             # no e
    with pytest.raises(SharedError, match="NOPERM"):
        run_call(alice, ALICE, BOB, "acl", [TEAM])                        # no a


def test_a_forwarded_write_is_committed_with_only_the_flags_allowed(alice, tmp_path):
    data = base64.b64encode(b"Subject: two\r\n\r\nx\r\n").decode()
    uid = run_call(alice, ALICE, BOB, "append", [TEAM, data, ["\\Seen", "\\Flagged"], None])
    state = read_state(tmp_path / "alice")          # on disk: committed before the answer
    assert state.box("Team").messages[uid].flags == frozenset()          # lri: neither s nor w
    run_call(alice, ALICE, BOB, "store_flags", [TEAM, [uid], ["\\Flagged"], "add"])
    assert read_state(tmp_path / "alice").box("Team").messages[uid].flags == frozenset()
    with pytest.raises(SharedError):
        run_call(alice, ALICE, BOB, "frobnicate", [])


def test_grantees_are_everyone_with_a_right(alice):
    alice.set_acl("Team", "anyone", "l")
    alice.create_mailbox("Other")
    alice.set_acl("Other", "carol@example.com", "")
    alice.commit()
    assert grantees(alice) == {BOB, "anyone"}


class FakeKV:
    """Enough of nats-py's KeyValue: get / create / update(last=) with revisions."""

    class Entry:
        def __init__(self, value: bytes, revision: int) -> None:
            self.value, self.revision = value, revision

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.interfere: list[str] = []      # keys another owner writes just before our next update

    async def get(self, key: str):
        if key not in self.data:
            raise KeyNotFoundError
        return self.Entry(*self.data[key])

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyWrongLastSequenceError
        return self._put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.interfere and self.interfere[0] == key:
            self.interfere.pop(0)
            listed = json.loads(self.data[key][0]) + ["dave@example.com"]
            self._put(key, json.dumps(listed).encode())
        if self.data[key][1] != last:
            raise KeyWrongLastSequenceError
        return self._put(key, value)

    def _put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.data[key] = (value, self.revision)
        return self.revision


def test_the_grant_index_lists_owners_per_grantee_and_survives_a_concurrent_writer():
    kv = FakeKV()
    now = [0.0]
    index = GrantIndex(kv, clock=lambda: now[0])

    async def go():
        await index.update(ALICE, set(), {BOB, "anyone"})
        await index.update("erin@example.com", set(), {BOB})
        assert await index.owners(BOB) == [ALICE, "erin@example.com"]
        assert await index.owners("carol@example.com") == [ALICE]        # through anyone
        assert await index.owners("bob@other.test") == []                # never another domain
        kv.interfere.append(names.acl_grant_key(BOB))
        await index.update(ALICE, {BOB, "anyone"}, {"anyone"})           # bob revoked meanwhile
        now[0] += 10                                                     # past the cache
        # alice still grants anyone of the domain; dave's concurrent grant was kept
        assert await index.owners(BOB) == [ALICE, "dave@example.com", "erin@example.com"]
        listed = json.loads(kv.data[names.acl_grant_key(BOB)][0])
        assert ALICE not in listed and {"dave@example.com", "erin@example.com"} <= set(listed)
    asyncio.run(go())
