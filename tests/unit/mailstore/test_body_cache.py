"""The IMAP message cache of a mail store: a body is read from disk once and parsed once
while it stays in the budget, the least recently used goes first, large bodies are never
kept, and a store's FETCH answers the same bytes with or without it."""

from __future__ import annotations

import pytest

from colony.protocols.imap import mime
from colony.protocols.imap import session as S
from colony.protocols.imap.shared import CompositeStore, shared_name
from colony.storage.mailbox import AccountMail, MailboxError
from colony_mailstore.imap_server import MessageCache, MailStore

MSG = b"From: a@example.com\r\nSubject: one\r\n\r\nbody one\r\n"


def reader(reads: list[str], name: str, size: int):
    def read() -> bytes:
        reads.append(name)
        return b"x" * size
    return read


def test_reads_once_evicts_the_least_recently_used_and_skips_large_bodies():
    reads: list[str] = []
    cache = MessageCache(budget=300, largest=200)
    assert cache.body(("acct", "a"), reader(reads, "a", 100)) == b"x" * 100
    assert cache.body(("acct", "a"), reader(reads, "a", 100)) == b"x" * 100
    cache.body(("acct", "b"), reader(reads, "b", 100))
    cache.body(("acct", "a"), reader(reads, "a", 100))            # a is now the most recently used
    cache.body(("acct", "c"), reader(reads, "c", 150))            # over budget: b goes, a stays
    assert cache.bytes <= 300
    cache.body(("acct", "a"), reader(reads, "a", 100))
    cache.body(("acct", "b"), reader(reads, "b", 100))
    cache.body(("acct", "big"), reader(reads, "big", 250))
    cache.body(("acct", "big"), reader(reads, "big", 250))
    assert reads == ["a", "b", "c", "b", "big", "big"]
    assert not cache.holds(("acct", "big")) and cache.holds(("acct", "b"))


def test_a_message_is_parsed_once_and_its_tree_counts_against_the_budget(monkeypatch):
    parses: list[bytes] = []
    real = mime.analyze
    monkeypatch.setattr(mime, "analyze", lambda data: parses.append(data) or real(data))
    reads: list[str] = []
    cache = MessageCache(budget=64 * 1024)

    def read() -> bytes:
        reads.append("m")
        return MSG

    assert cache.body(("acct", "m"), read) == MSG                # read, not parsed yet
    data, root = cache.parsed(("acct", "m"), read)               # parsed from the cached octets
    again = cache.parsed(("acct", "m"), read)
    assert data == MSG and again[1] is root and root.header("Subject") == "one"
    assert reads == ["m"] and parses == [MSG]
    assert cache.bytes > len(MSG) + 1000                         # the tree weighs more than the octets
    # A budget that holds the octets but not the parsed tree: the tree is not kept.
    small = MessageCache(budget=len(MSG) + 10)
    small.parsed(("acct", "m"), read)
    assert small.bytes == 0 and not small.holds(("acct", "m"))


def test_a_store_with_the_cache_answers_what_the_mailbox_holds(tmp_path):
    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    first = mail.append("INBOX", b"Subject: one\r\n\r\nbody one\r\n").uid
    second = mail.append("INBOX", b"Subject: two\r\n\r\nbody two\r\n").uid
    mail.commit()
    store = MailStore(mail, S.RecentMarks(), None, MessageCache())
    assert not store.holds("INBOX", [first, second]) and store.holds("INBOX", [])
    for _ in range(2):
        assert store.body("INBOX", first) == mail.body("INBOX", first)
        data, root = store.parsed("INBOX", second)
        assert data.endswith(b"body two\r\n") and root.header("Subject") == "two"
    assert store.holds("INBOX", [first, second])
    assert store.holds("No such mailbox", [first])   # answered NO without reading
    mail.expunge("INBOX", [first])
    mail.commit()
    with pytest.raises(MailboxError):         # expunged: never served from the cache
        store.body("INBOX", first)
    assert store.parsed("INBOX", first) is None   # the session then reads body(), and its error
    mail.close()


def test_a_colleagues_mailbox_is_never_answered_by_the_own_cache(tmp_path):
    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    uid = mail.append("INBOX", MSG).uid
    mail.commit()
    own = MailStore(mail, S.RecentMarks(), None, MessageCache())

    class View:            # a colleague's view without a cache of its own
        def body(self, name, uid):
            return b"Subject: theirs\r\n\r\n"

    composite = CompositeStore(own, "bob@example.com", ["alice@example.com"], lambda owner: View())
    assert composite.parsed("INBOX", uid)[1].header("Subject") == "one"
    assert composite.parsed(shared_name("alice@example.com", "INBOX"), uid) is None
    mail.close()
