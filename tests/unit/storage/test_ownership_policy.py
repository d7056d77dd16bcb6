"""Pure parts of account ownership: lapse detection on our own clock, and placement."""

from colony.cluster.ownership import TakeoverWatch, place


def test_a_revision_lapses_only_after_a_whole_ttl_unchanged():
    w = TakeoverWatch(ttl=10)
    assert not w.lapsed("a@x", 5, now=100.0)       # first sighting starts the clock
    assert not w.lapsed("a@x", 5, now=109.9)
    assert w.lapsed("a@x", 5, now=110.0)
    assert not w.lapsed("a@x", 6, now=111.0)       # renewed: the clock starts again
    assert not w.lapsed("a@x", 6, now=120.9)
    assert w.lapsed("a@x", 6, now=121.0)
    w.forget("a@x")
    assert not w.lapsed("a@x", 6, now=200.0)


def test_watch_is_bounded():
    w = TakeoverWatch(ttl=1, max_entries=3)
    for i in range(10):
        w.lapsed(f"u{i}@x", 1, now=0.0)
    assert not w.lapsed("u0@x", 1, now=5.0)        # forgotten: seen afresh
    assert w.lapsed("u9@x", 1, now=5.0)


def test_placement_is_stable_and_moves_little_more_than_it_must():
    """Balanced placement (every store its share of the partitions) cannot always keep every
    other account where it was when a store leaves: here one partition of mailstore-1 goes
    to mailstore-2 so that both take four, and mailstore-3's two are shared out."""
    from colony.bus import names

    members = ["mailstore-1", "mailstore-2", "mailstore-3"]
    accounts = [f"user{i}@example.com" for i in range(300)]
    before = {a: place(a, members) for a in accounts}
    assert before == {a: place(a, list(reversed(members))) for a in accounts}
    assert len(set(before.values())) == 3
    after = {a: place(a, members[:2]) for a in accounts}
    assert all(after[a] != "mailstore-3" for a in accounts)
    moved = {names.mail_partition(a) for a in accounts if before[a] != after[a]}
    leavers = {names.mail_partition(a) for a in accounts if before[a] == "mailstore-3"}
    assert leavers <= moved and len(moved - leavers) <= 1
    assert place("a@x", []) is None
