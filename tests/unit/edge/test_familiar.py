"""Familiar clients: a network that logged in to an account is not held by the account's
failed-login lock, on any edge; a stranger is.  The bucket faked in memory (the integration
test of the edge's IMAP login uses a real bus)."""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError

from colony.bus import names
from colony.contracts.auth import AuthCheckReply
from colony.settings import Settings
from colony_edge.access_proxy import LoginThrottle
from colony_edge.familiar import REWRITE_AFTER, FamiliarClients, familiar_key

from test_access_throttle import FakeCounters, FakeGate, FakeMetrics

DAY = 86_400.0


class Bucket:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.puts = self.gets = 0
        self.down = False

    async def put(self, key, value):
        if self.down:
            raise TimeoutError
        self.puts += 1
        self.data[key] = value

    async def get(self, key):
        if self.down:
            raise TimeoutError
        self.gets += 1
        if key not in self.data:
            raise KeyNotFoundError
        return object()


class JS:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    async def key_value(self, name):
        assert name == names.BUCKET_LOGIN_FAMILIAR
        return self.bucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_key_is_a_digest_of_the_account_and_the_network():
    key = familiar_key("Alice@Acme.Example", "2001:db8:1:2::5")
    assert key == familiar_key("alice@acme.example", "2001:db8:1:2:ffff::9")     # the same /64
    assert key != familiar_key("alice@acme.example", "2001:db8:1:3::5")
    assert "alice" not in key and len(key) == 64


async def test_a_login_on_one_edge_makes_the_client_familiar_on_another_and_writes_once_a_day():
    bucket, clock = Bucket(), Clock()
    one, two = (FamiliarClients(JS(bucket), 30 * DAY, clock=clock) for _ in range(2))
    assert not await two.known("alice@acme.example", "198.51.100.7")
    await one.remember("alice@acme.example", "198.51.100.7")
    await one.remember("alice@acme.example", "198.51.100.7")
    assert bucket.puts == 1
    assert await two.known("alice@acme.example", "198.51.100.7")
    assert not await two.known("alice@acme.example", "198.51.100.8")
    assert not await two.known("bob@acme.example", "198.51.100.7")
    gets = bucket.gets
    assert await two.known("alice@acme.example", "198.51.100.7") and bucket.gets == gets   # remembered here
    clock.now += REWRITE_AFTER + 1
    await one.remember("alice@acme.example", "198.51.100.7")
    assert bucket.puts == 2                      # the bucket's max age starts again


async def test_a_bus_that_does_not_answer_makes_everyone_a_stranger_and_off_is_off():
    bucket = Bucket()
    edge = FamiliarClients(JS(bucket), 30 * DAY)
    bucket.down = True
    await edge.remember("alice@acme.example", "198.51.100.7")    # not raised: the login succeeded
    other = FamiliarClients(JS(bucket), 30 * DAY)
    assert not await other.known("alice@acme.example", "198.51.100.7")
    off = FamiliarClients(JS(Bucket()), 0)
    await off.remember("alice@acme.example", "198.51.100.7")
    assert not await off.known("alice@acme.example", "198.51.100.7")


async def test_strangers_lock_an_account_for_strangers_only():
    counters = FakeCounters()
    familiar = FamiliarClients(None, 30 * DAY)
    t = LoginThrottle(Settings(access_login_failures_per_ip=100, access_login_failures_per_account=3), counters,
                      FakeGate(), familiar)
    await t.succeeded("198.51.100.7", "alice@acme.example")       # the owner's usual network
    for i in range(3):
        await t.failed(f"203.0.113.{i}", "alice@acme.example")
    assert await t.blocked("203.0.113.99", "alice@acme.example")
    assert not await t.blocked("198.51.100.7", "alice@acme.example")
    assert await t.blocked("198.51.100.8", "alice@acme.example")


class ThrottlingAuth:
    """The auth service with the account locked: refuses strangers, lets familiar clients in."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def check(self, user, password, service=None, remote_addr=None, familiar=False):
        self.calls.append(familiar)
        if not familiar:
            return AuthCheckReply.refused("throttled", retry_after=30)
        return AuthCheckReply(ok=True, account=user, domain=user.rpartition("@")[2])


async def test_the_auth_services_account_lock_is_asked_again_for_a_familiar_client():
    from colony_edge.access_proxy import AccessProxy, Login

    familiar = FamiliarClients(None, 30 * DAY)
    s = Settings()
    auth = ThrottlingAuth()
    proxy = AccessProxy(s, b"k" * 32, auth, None, LoginThrottle(s, FakeCounters(), FakeGate(), familiar),
                        FakeGate(), None, None, FakeMetrics(), "edge.test")

    async def hand_off(proto, account, ip, finder=None):
        return Login(True, "OK")
    proxy.hand_off = hand_off
    stranger = await proxy.login("imap", "alice@acme.example", "right", "203.0.113.5")
    assert not stranger.ok and stranger.code == "SYS/TEMP" and auth.calls == [False]
    await familiar.remember("alice@acme.example", "198.51.100.7")
    assert (await proxy.login("imap", "alice@acme.example", "right", "198.51.100.7")).ok
    assert auth.calls == [False, False, True]
