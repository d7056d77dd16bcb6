"""MAIL partitions: the store that fetches a partition is the one placement gives its accounts,
each partition has exactly one fetching store for a given membership, and the subjects of the
partition consumers never overlap (a work-queue stream refuses overlapping consumers)."""

from __future__ import annotations

from colony.bus import names
from colony.cluster.ownership import consumes_partition, partition_stores, place


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


def test_every_store_fetches_its_share_of_the_partitions_whatever_the_names():
    """Plain rendezvous hashing gave mailstore-1..3 four, three and one of the eight partitions
    (half of the cluster's mail on one store), and a fifth store none at all."""
    for names_of in (lambda i: f"mailstore-{i}", lambda i: f"store-{i * 7919}.eu", lambda i: f"m{i}"):
        for n in range(1, names.MAIL_PARTITIONS + 3):
            stores = [names_of(i) for i in range(1, n + 1)]
            owners = partition_stores(stores)
            assert len(owners) == names.MAIL_PARTITIONS and set(owners) <= set(stores)
            shares = sorted(owners.count(s) for s in stores)
            floor = names.MAIL_PARTITIONS // n
            assert shares[0] >= floor and shares[-1] <= floor + 1, (n, shares)
            assert partition_stores(reversed(stores)) == owners         # every caller agrees
            # a store leaving hands its own partitions on and moves few others
            if n > 1:
                after = partition_stores(stores[1:])
                moved = [p for p in range(names.MAIL_PARTITIONS) if owners[p] != after[p]]
                assert {p for p in range(names.MAIL_PARTITIONS) if owners[p] == stores[0]} <= set(moved)
                assert len(moved) <= names.MAIL_PARTITIONS // 2 + 1, (n, moved)
    assert partition_stores(()) == () and place("a@x", ()) is None


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


async def test_a_member_whose_heartbeat_stops_leaves_the_ready_set(monkeypatch):
    """Its record may still say READY (no controller marked it FAILED): after stale_after
    seconds on our clock without a new heartbeat it is out, so its partitions pass on."""
    from datetime import UTC, datetime, timedelta

    from colony.cluster import ownership
    from colony.cluster.membership import NodeRecord, NodeState

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    beats = {"mailstore-1": t0, "mailstore-2": t0}

    async def read_nodes(nc):
        return [NodeRecord(id=n, role="mailstore", state=NodeState.READY, host="h", pid=1, version="v",
                           started_at=t0, heartbeat_at=at) for n, at in beats.items()]

    monkeypatch.setattr(ownership, "read_nodes", read_nodes)
    now = [100.0]
    members = ownership.MailstoreMembers(None, stale_after=5.0, clock=lambda: now[0])
    assert await members.refresh() == ("mailstore-1", "mailstore-2")
    for step in range(1, 8):
        now[0] += 1.0
        beats["mailstore-1"] = t0 + timedelta(seconds=step)      # 1 keeps beating, 2 is paused
        ready = await members.refresh()
    assert ready == ("mailstore-1",)
    beats["mailstore-2"] = t0 + timedelta(seconds=60)          # SIGCONT: back at its next beat
    assert await members.refresh() == ("mailstore-1", "mailstore-2")


def test_members_from_watched_records_without_a_read():
    """The watch feeds records (any role, any order); ``update()`` alone says who is in: READY
    mail stores whose heartbeat changed within stale_after on our clock.  A record older than
    one already seen (the watch lagging behind a full read) changes nothing."""
    from datetime import UTC, datetime, timedelta

    from colony.cluster import ownership
    from colony.cluster.membership import NodeRecord, NodeState

    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def record(node, at, role="mailstore", state=NodeState.READY):
        return NodeRecord(id=node, role=role, state=state, host="h", pid=1, version="v", started_at=t0,
                          heartbeat_at=at)

    now = [100.0]
    members = ownership.MailstoreMembers(None, stale_after=5.0, clock=lambda: now[0])
    members.observe(record("mailstore-1", t0))
    members.observe(record("mailstore-2", t0))
    members.observe(record("edge-1", t0, role="edge"))
    members.observe(record("mailstore-3", t0, state=NodeState.NOT_READY))
    assert members.update() == ("mailstore-1", "mailstore-2")
    for step in range(1, 7):
        now[0] += 1.0
        members.observe(record("mailstore-1", t0 + timedelta(seconds=step)))
        members.observe(record("mailstore-2", t0))                 # a stale copy: no newer beat
    assert members.update() == ("mailstore-1",)
    members.observe(record("mailstore-1", t0))                      # lagging: ignored
    assert members.update() == ("mailstore-1",)
    members.observe(record("mailstore-2", t0 + timedelta(seconds=60)))
    assert members.update() == ("mailstore-1", "mailstore-2")
    members.forget("mailstore-1")
    assert members.update() == ("mailstore-2",)
