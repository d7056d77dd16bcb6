"""What an IMAP command costs the store besides its own work: the quota is not recomputed at
every command yet never staler than the directory entries it comes from; the grant index is
followed only around commands that may change it; a commit that wrote no body does not sync
the bodies directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest
from nats.js.errors import KeyNotFoundError

from colony.bus import names
from colony.protocols.imap import session as S
from colony.storage.mailbox import AccountMail
from colony_mailstore.directory import _CACHE_SECONDS, Directory


class Entry:
    def __init__(self, value: bytes) -> None:
        self.value = value


class FakeKV:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.gets = 0

    def put(self, kind: str, name: str, value: dict) -> None:
        self.values[names.directory_key(kind, name)] = orjson.dumps(value)

    async def get(self, key: str) -> Entry:
        self.gets += 1
        if key not in self.values:
            raise KeyNotFoundError()
        return Entry(self.values[key])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def account(quota: int | None, cos: str | None = None) -> dict:
    return {"kind": "account", "address": "bo@example.com", "domain": "example.com", "name": "bo",
            "quota_bytes": quota, "cos": cos}


async def test_the_quota_is_reused_only_as_long_as_its_entries_would_be():
    kv, clock = FakeKV(), Clock()
    kv.put(names.AGG_ADDRESS, "bo@example.com", account(5000))
    kv.put(names.AGG_DOMAIN, "example.com", {"kind": "domain", "name": "example.com", "cos": "small"})
    kv.put(names.AGG_COS, "small", {"kind": "cos", "name": "small", "limits": {"quota_bytes": 3000}})
    directory = Directory(kv, clock=clock)
    assert await directory.quota("bo@example.com") == 3000       # the domain's class caps the account
    reads = kv.gets
    for _ in range(20):
        assert await directory.quota("bo@example.com") == 3000
    assert kv.gets == reads                                         # no read, no recomputation

    # The class changes; its entry (read with the others) expires after _CACHE_SECONDS, and
    # so does the quota computed from it: the change shows as soon as it did before.
    kv.put(names.AGG_COS, "small", {"kind": "cos", "name": "small", "limits": {"quota_bytes": 1000}})
    clock.now += _CACHE_SECONDS - 0.5
    assert await directory.quota("bo@example.com") == 3000
    clock.now += 0.5
    assert await directory.quota("bo@example.com") == 1000


async def test_the_quota_of_an_unknown_account_is_none_and_cached():
    kv, clock = FakeKV(), Clock()
    directory = Directory(kv, clock=clock)
    assert await directory.quota("nobody@example.com") is None
    reads = kv.gets
    assert await directory.quota("nobody@example.com") is None
    assert kv.gets == reads
    kv.put(names.AGG_ADDRESS, "nobody@example.com", {**account(700), "address": "nobody@example.com"})
    clock.now += _CACHE_SECONDS
    assert await directory.quota("nobody@example.com") == 700


def _pending(line: bytes) -> S.Session:
    session = S.Session(lambda: 0.0, account="bo@example.com", handed_over=True)
    while session.next_action() is not None:
        pass
    session.receive_data(line)
    assert isinstance(session.next_action(), S.NeedStore)
    return session


@pytest.mark.parametrize("line", [b"a SELECT INBOX\r\n", b"a STATUS INBOX (MESSAGES)\r\n", b"a LIST \"\" *\r\n",
                                  b"a GETACL INBOX\r\n", b"a APPEND INBOX {1+}\r\nx\r\n"])
def test_reads_and_message_writes_keep_the_grants(line):
    assert _pending(line).pending_keeps_grants()


@pytest.mark.parametrize("line", [b"a SETACL INBOX al@example.com lr\r\n", b"a DELETEACL INBOX al@example.com\r\n",
                                  b"a CREATE Projects\r\n", b"a DELETE Projects\r\n", b"a RENAME Projects Old\r\n"])
def test_commands_that_may_change_mailboxes_or_acls_are_followed(line):
    assert not _pending(line).pending_keeps_grants()


def test_a_commit_without_a_new_body_does_not_sync_the_bodies_directory(tmp_path, monkeypatch):
    synced = []   # directories fsynced (the commit keeps the bodies directory open to sync it)
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    mail = AccountMail(tmp_path / "mail", 1)
    mail.open()
    synced.clear()
    stored = mail.append("INBOX", b"Subject: hi\r\n\r\nbody\r\n")
    mail.commit()
    assert synced == [mail.bodies_dir]          # the new body's name is durable before its record
    mail.store_flags("INBOX", [stored.uid], ["\\Seen"], "add")
    mail.commit()
    assert synced == [mail.bodies_dir]          # a flag change wrote no body: nothing to sync there
    mail.append("INBOX", b"Subject: again\r\n\r\nbody\r\n")
    mail.commit()
    assert synced == [mail.bodies_dir, mail.bodies_dir]
    mail.close()
    reopened = AccountMail(tmp_path / "mail", 2)
    reopened.open()
    assert [m.flags for m in reopened.messages("INBOX")] == [frozenset({"\\Seen"}), frozenset()]
    reopened.close()
