"""The IMAP body cache of a mail store: a body is read from disk once while it stays in the
budget, the least recently used goes first, large bodies are never kept, and a store's
FETCH answers the same bytes with or without it."""

from __future__ import annotations

import pytest

from colony.protocols.imap import session as S
from colony.storage.mailbox import AccountMail, MailboxError
from colony_mailstore.imap_server import BodyCache, MailStore


def test_reads_once_evicts_the_least_recently_used_and_skips_large_bodies():
    reads: list[str] = []
    cache = BodyCache(budget=300, largest=200)

    def reader(name: str, size: int):
        def read() -> bytes:
            reads.append(name)
            return b"x" * size
        return read

    assert cache.get(("acct", "a"), reader("a", 100)) == b"x" * 100
    assert cache.get(("acct", "a"), reader("a", 100)) == b"x" * 100
    cache.get(("acct", "b"), reader("b", 100))
    cache.get(("acct", "a"), reader("a", 100))            # a is now the most recently used
    cache.get(("acct", "c"), reader("c", 150))            # over budget: b goes, a stays
    assert cache.bytes <= 300
    cache.get(("acct", "a"), reader("a", 100))
    cache.get(("acct", "b"), reader("b", 100))
    cache.get(("acct", "big"), reader("big", 250))
    cache.get(("acct", "big"), reader("big", 250))
    assert reads == ["a", "b", "c", "b", "big", "big"]


def test_a_store_with_the_cache_answers_what_the_mailbox_holds(tmp_path):
    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    first = mail.append("INBOX", b"Subject: one\r\n\r\nbody one\r\n").uid
    second = mail.append("INBOX", b"Subject: two\r\n\r\nbody two\r\n").uid
    mail.commit()
    store = MailStore(mail, S.RecentMarks(), None, BodyCache())
    for _ in range(2):
        assert store.body("INBOX", first) == mail.body("INBOX", first)
        assert store.body("INBOX", second).endswith(b"body two\r\n")
    mail.expunge("INBOX", [first])
    mail.commit()
    with pytest.raises(MailboxError):         # expunged: never served from the cache
        store.body("INBOX", first)
    mail.close()
