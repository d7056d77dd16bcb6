"""The SIP farm's HA1 cache (``colony_sipfarm.credentials``): kept while the directory is
watched, dropped by the directory writes that may change an answer, never kept from a lookup
a change may have overtaken."""

from __future__ import annotations

from colony.bus import names
from colony_sipfarm.credentials import SETTLE, CredentialCache

ALICE, BOB, REALM = "alice@acme.example", "bob@acme.example", "acme.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched(size: int = 100, ttl: float = 3600) -> tuple[CredentialCache, Clock]:
    clock = Clock()
    cache = CredentialCache(size, ttl, clock=clock)
    cache.watching = True
    clock.now += SETTLE + 1          # lookups begun at the watch's start are not kept
    return cache, clock


def look_up(cache: CredentialCache, account: str, ha1: str | None, realm: str = REALM) -> None:
    begun = cache.begin()
    cache.put(account, realm, "MD5", ha1, begun)


def test_a_remembered_ha1_is_answered_until_its_ttl():
    cache, clock = watched(ttl=600)
    assert cache.get(ALICE, REALM, "MD5") is None
    look_up(cache, ALICE, "a" * 32)
    assert cache.get(ALICE, REALM, "MD5") == "a" * 32
    assert cache.get(ALICE, REALM, "SHA-256") is None          # per algorithm
    clock.now += 599
    assert cache.get(ALICE, REALM, "MD5") == "a" * 32
    clock.now += 2
    assert cache.get(ALICE, REALM, "MD5") is None
    assert (cache.hits, cache.misses) == (2, 3)


def test_nothing_is_kept_while_the_directory_is_not_watched():
    clock = Clock()
    cache = CredentialCache(100, 3600, clock=clock)
    look_up(cache, ALICE, "a" * 32)
    assert cache.get(ALICE, REALM, "MD5") is None
    cache.watching = True
    clock.now += SETTLE + 1
    look_up(cache, ALICE, "a" * 32)
    assert cache.get(ALICE, REALM, "MD5") == "a" * 32
    cache.watching = False           # the watch stopped: it may miss changes from now on
    assert cache.get(ALICE, REALM, "MD5") is None and len(cache) == 0


def test_a_lookup_begun_before_the_watch_started_is_not_kept():
    clock = Clock()
    cache = CredentialCache(100, 3600, clock=clock)
    begun = cache.begin()
    clock.now += 0.5
    cache.watching = True            # a change made before this was not seen
    clock.now += 0.5
    cache.put(ALICE, REALM, "MD5", "a" * 32, begun)
    assert cache.get(ALICE, REALM, "MD5") is None


def test_a_write_of_the_account_drops_its_entries_only():
    cache, clock = watched()
    look_up(cache, ALICE, "a" * 32)
    look_up(cache, BOB, "b" * 32)
    cache.on_directory_change(names.AGG_ADDRESS, "Alice@Acme.Example")
    assert cache.get(ALICE, REALM, "MD5") is None
    assert cache.get(BOB, REALM, "MD5") == "b" * 32
    assert cache.invalidated == 1


def test_a_lookup_right_after_a_change_is_used_once_but_not_kept():
    """The projector writes the directory and commits the read model side by side: the auth
    service may still answer from the old row just after the directory write."""
    cache, clock = watched()
    cache.on_directory_change(names.AGG_ADDRESS, ALICE)
    clock.now += SETTLE / 2
    look_up(cache, ALICE, "old-ha1")
    assert cache.get(ALICE, REALM, "MD5") is None
    clock.now += SETTLE
    look_up(cache, ALICE, "new-ha1")
    assert cache.get(ALICE, REALM, "MD5") == "new-ha1"


def test_a_lookup_in_flight_when_its_account_changed_is_not_kept():
    cache, clock = watched()
    begun = cache.begin()
    clock.now += 5                   # a slow answer
    cache.on_directory_change(names.AGG_ADDRESS, ALICE)
    cache.put(ALICE, REALM, "MD5", "old-ha1", begun)
    assert cache.get(ALICE, REALM, "MD5") is None
    begun = cache.begin()            # another account's answer in flight is unaffected
    cache.put(BOB, REALM, "MD5", "b" * 32, begun)
    assert cache.get(BOB, REALM, "MD5") == "b" * 32


def test_a_domain_write_drops_its_accounts_and_cos_or_alias_writes_drop_everything():
    cache, clock = watched()
    look_up(cache, ALICE, "a" * 32)
    look_up(cache, "carol@other.example", "c" * 32, realm="other.example")
    cache.on_directory_change(names.AGG_DOMAIN, REALM)
    assert cache.get(ALICE, REALM, "MD5") is None
    assert cache.get("carol@other.example", "other.example", "MD5") == "c" * 32
    clock.now += SETTLE + 1
    look_up(cache, ALICE, "a" * 32)
    for kind in (names.AGG_COS, names.AGG_DOMAIN_ALIAS):
        cache.on_directory_change(kind, "anything")
        assert len(cache) == 0
        clock.now += SETTLE + 1
        look_up(cache, ALICE, "a" * 32)
        assert len(cache) == 1


def test_a_refusal_drops_what_was_remembered_and_is_not_kept():
    cache, clock = watched()
    look_up(cache, ALICE, "a" * 32)
    look_up(cache, ALICE, None)      # e.g. the account was disabled and the watch has not told yet
    assert cache.get(ALICE, REALM, "MD5") is None and len(cache) == 0


def test_bounded_least_recently_used_first():
    cache, clock = watched(size=3)
    for i in range(3):
        look_up(cache, f"u{i}@acme.example", f"{i}" * 32)
    assert cache.get("u0@acme.example", REALM, "MD5") is not None     # u0 used: u1 is the oldest now
    look_up(cache, "u3@acme.example", "3" * 32)
    assert len(cache) == 3
    assert cache.get("u1@acme.example", REALM, "MD5") is None
    assert cache.get("u0@acme.example", REALM, "MD5") is not None


def test_forgotten_invalidations_make_older_lookups_unkeepable():
    cache, clock = watched()
    begun = cache.begin()
    for i in range(5000):            # more than the remembered history
        clock.now += 0.001
        cache.on_directory_change(names.AGG_ADDRESS, f"u{i}@acme.example")
    cache.put(ALICE, REALM, "MD5", "a" * 32, begun)
    assert cache.get(ALICE, REALM, "MD5") is None


def test_ttl_zero_keeps_nothing():
    cache, clock = watched(ttl=0)
    look_up(cache, ALICE, "a" * 32)
    assert cache.get(ALICE, REALM, "MD5") is None
