"""MAIL partitions: the store that fetches a partition is the one placement gives its accounts,
each partition has exactly one fetching store for a given membership, and the subjects of the
partition consumers never overlap (a work-queue stream refuses overlapping consumers)."""

from __future__ import annotations

from colony.bus import names
from colony.cluster.ownership import consumes_partition, place


STORES = ("mailstore-1", "mailstore-2", "mailstore-3")


def test_an_account_is_placed_on_the_store_that_fetches_its_partition():
    for n in range(300):
        address = f"user{n}@example.com"
        owner = place(address, STORES)
        p = names.mail_partition(address)
        assert consumes_partition(p, owner, STORES)
        assert [s for s in STORES if consumes_partition(p, s, STORES)] == [owner]


def test_every_partition_is_fetched_by_one_store_and_a_lone_store_fetches_all():
    fetched = [[s for s in STORES if consumes_partition(p, s, STORES)] for p in range(names.MAIL_PARTITIONS)]
    assert all(len(f) == 1 for f in fetched)
    assert all(consumes_partition(p, "mailstore-9", ()) for p in range(names.MAIL_PARTITIONS))  # starting alone
    # a store leaving hands only its own partitions on (rendezvous): the others keep theirs
    remaining = STORES[:2]
    for p, (before,) in enumerate(fetched):
        if before in remaining:
            assert consumes_partition(p, before, remaining)


def test_partition_is_stable_and_case_blind():
    assert names.mail_partition("Bob@Example.com") == names.mail_partition("bob@example.com")
    assert 0 <= names.mail_partition("bob@example.com") < names.MAIL_PARTITIONS
    spread = {names.mail_partition(f"u{n}@example.com") for n in range(200)}
    assert spread == set(range(names.MAIL_PARTITIONS))


def test_partition_subjects_match_only_their_own_filter():
    def matches(pattern: str, subject: str) -> bool:
        p, s = pattern.split("."), subject.split(".")
        if p[-1] == ">":
            return len(s) >= len(p) and all(a in ("*", b) for a, b in zip(p[:-1], s))
        return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s))

    subjects = [names.mail_subject("eu", "acme.example", p) for p in range(names.MAIL_PARTITIONS)]
    subjects.append(names.mail_subject("eu", "acme.example"))          # an older edge's
    filters = [names.mail_partition_filter("eu", p) for p in range(names.MAIL_PARTITIONS)]
    filters.append(names.mail_unpartitioned_filter("eu"))
    for subject in subjects:
        assert sum(matches(f, subject) for f in filters) == 1, subject
        assert matches(names.mail_region_filter("eu"), subject)          # what other regions source
        assert matches(names.SUBJECTS_MAIL, subject)
