"""The edge's login cache: bounded, expiring, keyed by a MAC, dropped when the directory changes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from colony.contracts.auth import AuthCheckReply, AuthFailure
from colony.contracts.cache import DirectoryIndex
from colony.settings import Settings
from colony_edge.access_proxy import AccessMetrics, AccessProxy, Login, LoginThrottle
from colony_edge.login_cache import LoginCache
from colony_edge.security.gate import EdgeGate

OK = AuthCheckReply.granted("amy@acme.example", "acme.example", {"services": ["imap"]})
WRONG = AuthCheckReply.refused(AuthFailure.INVALID)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(**kw) -> tuple[LoginCache, Clock]:
    clock = Clock()
    return LoginCache(kw.pop("size", 100), kw.pop("ttl", 60.0), kw.pop("negative_ttl", 5.0), clock=clock, **kw), clock


def _remember(cache: LoginCache, user: str, password: str, reply: AuthCheckReply, service: str = "imap") -> bytes:
    key = cache.key(service, user, password)
    assert cache.get(key) is None
    cache.put(key, user, reply, cache.mark())
    return key


def test_a_success_is_remembered_for_the_ttl_only():
    cache, clock = _cache(ttl=60.0)
    key = _remember(cache, "amy@acme.example", "secret", OK)
    clock.now += 59
    assert cache.get(key) == OK
    clock.now += 2
    assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_key_is_a_mac_of_service_user_and_password_never_the_password():
    cache, _ = _cache()
    key = cache.key("imap", "amy@acme.example", "secret")
    assert b"secret" not in key and len(key) == 32
    assert key != cache.key("pop", "amy@acme.example", "secret")
    assert key != cache.key("imap", "amy@acme.example", "Secret")
    assert key != cache.key("imap", "amy@acme.example" + "s", "ecret")  # fields cannot slide into each other
    assert key != LoginCache(10, 60.0).key("imap", "amy@acme.example", "secret")  # a random key per process


def test_another_password_is_a_miss():
    cache, _ = _cache()
    _remember(cache, "amy@acme.example", "secret", OK)
    assert cache.get(cache.key("imap", "amy@acme.example", "guess")) is None


def test_wrong_passwords_are_kept_briefly_other_refusals_never():
    cache, clock = _cache(negative_ttl=5.0)
    key = _remember(cache, "amy@acme.example", "guess", WRONG)
    assert cache.get(key) == WRONG and cache.negative_hits == 1
    clock.now += 6
    assert cache.get(key) is None
    for reason in (AuthFailure.THROTTLED, AuthFailure.SERVICE_NOT_ENABLED, AuthFailure.INTERNAL,
                   AuthFailure.ACCOUNT_DISABLED):
        key = _remember(cache, "amy@acme.example", str(reason), AuthCheckReply.refused(reason))
        assert cache.get(key) is None
    off, _ = _cache(negative_ttl=0.0)
    key = _remember(off, "amy@acme.example", "guess", WRONG)
    assert off.get(key) is None


def test_size_is_bounded_least_recently_used_first():
    cache, _ = _cache(size=3)
    keys = [_remember(cache, f"u{i}@acme.example", "pw", OK) for i in range(3)]
    assert cache.get(keys[0]) == OK             # u0 is now the most recent
    _remember(cache, "u3@acme.example", "pw", OK)
    assert len(cache) == 3
    assert cache.get(keys[1]) is None           # u1 was the least recently used
    assert cache.get(keys[0]) == OK


def test_a_directory_write_of_the_account_drops_it_at_once():
    cache, _ = _cache()
    index = DirectoryIndex()
    index.on_change = cache.on_directory_change
    amy = _remember(cache, "amy@acme.example", "secret", OK)
    bob = _remember(cache, "bob@acme.example", "secret",
                    AuthCheckReply.granted("bob@acme.example", "acme.example", {}))
    # a password change rewrites the entry with a new seq and nothing else visible
    index.apply("address.amy_40acme_2eexample",
                b'{"kind":"account","address":"amy@acme.example","domain":"acme.example","name":"amy","seq":9}')
    assert cache.get(amy) is None
    assert cache.get(bob) is not None
    assert cache.invalidated == 1


def test_a_login_by_alias_is_dropped_when_the_account_or_the_alias_changes():
    cache, _ = _cache()
    key = _remember(cache, "Team@acme.example", "secret", OK)   # resolved to amy
    cache.on_directory_change("address", "amy@acme.example")
    assert cache.get(key) is None
    key = _remember(cache, "Team@acme.example", "secret", OK)
    cache.on_directory_change("address", "team@acme.example")
    assert cache.get(key) is None


def test_domain_changes_drop_its_accounts_cos_and_domain_aliases_drop_everything():
    cache, _ = _cache()
    amy = _remember(cache, "amy@acme.example", "pw", OK)
    other = _remember(cache, "joe@other.example", "pw", AuthCheckReply.granted("joe@other.example", "other.example", {}))
    cache.on_directory_change("domain", "acme.example")
    assert cache.get(amy) is None and cache.get(other) is not None
    cache.on_directory_change("cos", "gold")
    assert cache.get(other) is None
    other = _remember(cache, "joe@other.example", "pw", OK)
    cache.on_directory_change("domain_alias", "acme-mail.example")
    assert len(cache) == 0


def test_a_check_overtaken_by_a_change_of_its_account_is_not_kept():
    cache, _ = _cache()
    key = cache.key("imap", "amy@acme.example", "old")
    mark = cache.mark()                                       # the check leaves ...
    cache.on_directory_change("address", "amy@acme.example")  # ... the password changes ...
    cache.put(key, "amy@acme.example", OK, mark)              # ... its answer comes back
    assert cache.get(key) is None
    # a change of somebody else meanwhile does not stop it from being kept
    mark = cache.mark()
    cache.on_directory_change("address", "bob@acme.example")
    cache.put(key, "amy@acme.example", OK, mark)
    assert cache.get(key) == OK
    # nor does a check older than the invalidations remembered get kept
    mark = cache.mark()
    for i in range(5000):
        cache.on_directory_change("address", f"u{i}@acme.example")
    cache.put(cache.key("imap", "zed@acme.example", "pw"), "zed@acme.example", OK, mark)
    assert cache.get(cache.key("imap", "zed@acme.example", "pw")) is None


def test_metrics_count_hits_and_misses():
    cache, _ = _cache()
    key = _remember(cache, "amy@acme.example", "secret", OK)
    cache.get(key)
    samples = {(m.name, tuple(s.labels.values())): s.value for m in cache.metrics() for s in m.samples}
    assert samples[("colony_access_auth_cache_lookups", ("hit",))] == 1
    assert samples[("colony_access_auth_cache_lookups", ("miss",))] == 1
    assert samples[("colony_access_auth_cache_entries", ())] == 1


@pytest.mark.parametrize("field,value", [("access_auth_cache_size", -1), ("access_auth_cache_ttl", 0),
                                         ("access_auth_cache_negative_ttl", -1)])
def test_bad_settings_name_the_key(field, value):
    with pytest.raises(Exception, match=field):
        Settings(**{field: value})


# --- in the proxy's login ----------------------------------------------------------------------

class FakeAuth:
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords, self.calls = passwords, 0

    async def check(self, user, password, service=None, remote_addr=None):
        self.calls += 1
        if self.passwords.get(user) == password:
            return AuthCheckReply.granted(user, user.partition("@")[2], {"services": ["imap"]})
        return AuthCheckReply.refused(AuthFailure.INVALID)


class CountingThrottle(LoginThrottle):
    def __init__(self, limit: int) -> None:
        self.limit, self.failures, self.familiar = limit, 0, None

    async def blocked(self, ip, account):
        return self.failures >= self.limit

    async def failed(self, ip, account):
        self.failures += 1


def _proxy(auth, throttle, cache) -> AccessProxy:
    proxy = AccessProxy(Settings(), b"k" * 32, auth, None, throttle, EdgeGate(Settings(), None, None), None, None,
                        AccessMetrics(CollectorRegistry()), "edge.test", login_cache=cache)

    async def hand_off(proto, account, ip, finder=None):
        return Login(True, "OK logged in")

    proxy.hand_off = hand_off
    return proxy


async def test_a_cached_login_asks_nobody_and_failures_still_count_toward_the_throttle():
    auth = FakeAuth({"amy@acme.example": "secret"})
    throttle = CountingThrottle(limit=3)
    cache, _ = _cache(negative_ttl=30.0)
    proxy = _proxy(auth, throttle, cache)
    assert (await proxy.login("imap", "amy@acme.example", "secret", "198.51.100.7")).ok
    assert (await proxy.login("imap", "amy@acme.example", "secret", "198.51.100.7")).ok
    assert auth.calls == 1
    for _ in range(3):  # the same wrong password: asked once, counted every time
        assert not (await proxy.login("imap", "amy@acme.example", "guess", "198.51.100.7")).ok
    assert auth.calls == 2 and throttle.failures == 3
    refused = await proxy.login("imap", "amy@acme.example", "secret", "198.51.100.7")
    assert not refused.ok and refused.code == "SYS/TEMP"   # the throttle comes before the cache


def test_an_empty_cache_ignores_the_directory_unless_a_check_is_on_its_way():
    cache, _ = _cache()
    for i in range(10):  # e.g. the directory's cold start: nothing to drop, nothing remembered
        cache.on_directory_change("address", f"u{i}@acme.example")
    assert cache.mark() == 0
    cache.put(b"k" * 32, "amy@acme.example", None, 0)   # a check with no answer releases its mark
    key = cache.key("imap", "amy@acme.example", "old")
    mark = cache.mark()
    cache.on_directory_change("address", "amy@acme.example")   # noticed: a check is on its way
    cache.put(key, "amy@acme.example", OK, mark)
    assert cache.get(key) is None


def test_expired_answers_go_without_being_looked_up_again():
    # A password spray over many user names: each wrong guess is remembered for negative_ttl,
    # and then gone -- not kept until `size` newer entries push it out.
    cache, clock = _cache(size=100_000, ttl=3600.0, negative_ttl=60.0)
    amy = _remember(cache, "amy@acme.example", "secret", OK)
    for n in range(5000):                          # 10 refusals a second for 500 s
        _remember(cache, f"user{n}@acme.example", f"guess{n}", WRONG)
        clock.now += 0.1
    assert len(cache) <= 601 + 1                   # the last 60 s of refusals, and amy
    assert cache.get(amy) == OK                    # a success lives its own ttl
    clock.now += 61
    assert cache.get(cache.key("imap", "nobody@acme.example", "x")) is None
    assert len(cache) == 1 and len(cache._by_name) == 1
    clock.now += 3600
    assert cache.get(amy) is None and len(cache) == 0


def test_an_entry_put_again_keeps_its_new_lifetime():
    cache, clock = _cache(ttl=60.0, negative_ttl=5.0)
    key = _remember(cache, "amy@acme.example", "secret", OK)
    clock.now += 30
    cache.put(key, "amy@acme.example", OK, cache.mark())   # checked again (a second edge session)
    clock.now += 31                                         # the first put's lifetime is over
    assert cache.get(key) == OK                            # ... not the second's
    clock.now += 30
    assert cache.get(key) is None and len(cache) == 0
