"""Login-failure throttling at the edge: per address (trusted networks exempt) and per account."""

from __future__ import annotations

from colony.settings import Settings
from colony_edge.access_proxy import LoginThrottle


class FakeCounters:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    async def hit(self, kind: str, subject: str, n: int = 1) -> float:
        self.counts[(kind, subject)] = self.counts.get((kind, subject), 0) + n
        return self.counts[(kind, subject)]

    async def rate(self, kind: str, subject: str) -> float:
        return self.counts.get((kind, subject), 0)


class FakeGate:
    def trusted(self, ip: str) -> bool:
        return ip.startswith("127.")

    def on_login(self, ip: str, account: str):
        return None

    def on_logout(self, ip: str, account: str) -> None:
        pass


async def test_failures_per_address_block_that_address_only():
    counters = FakeCounters()
    t = LoginThrottle(Settings(access_login_failures_per_ip=3, access_login_failures_per_account=100), counters,
                      FakeGate())
    for i in range(3):
        assert not await t.blocked("198.51.100.7", f"user{i}@acme.example")
        await t.failed("198.51.100.7", f"user{i}@acme.example")
    assert await t.blocked("198.51.100.7", "other@acme.example")
    assert not await t.blocked("198.51.100.8", "other@acme.example")


async def test_failures_on_an_account_block_it_from_everywhere_trusted_networks_included():
    counters = FakeCounters()
    t = LoginThrottle(Settings(access_login_failures_per_ip=100, access_login_failures_per_account=2), counters,
                      FakeGate())
    await t.failed("198.51.100.7", "Alice@acme.example")
    await t.failed("203.0.113.9", "alice@acme.example")
    assert await t.blocked("127.0.0.1", "alice@acme.example")
    assert not await t.blocked("127.0.0.1", "bob@acme.example")


async def test_trusted_networks_skip_the_address_limit_and_ipv6_counts_by_64():
    counters = FakeCounters()
    t = LoginThrottle(Settings(access_login_failures_per_ip=2, access_login_failures_per_account=100), counters,
                      FakeGate())
    for i in range(5):
        await t.failed("127.0.0.1", f"u{i}@a.example")
    assert not await t.blocked("127.0.0.1", "x@a.example")
    await t.failed("2001:db8:1:2::1", "a@a.example")
    await t.failed("2001:db8:1:2::99", "b@a.example")
    assert await t.blocked("2001:db8:1:2:ffff::5", "c@a.example")


class FakeAuth:
    def __init__(self, reply) -> None:
        self.reply, self.calls = reply, []

    async def check(self, user, password, service=None, remote_addr=None):
        self.calls.append(service)
        return self.reply


class FakeMetrics:
    class _C:
        def labels(self, *a):
            return self

        def inc(self):
            pass
    logins = _C()


def proxy(reply, counters=None, **settings):
    from colony_edge.access_proxy import AccessProxy

    s = Settings(**settings)
    return AccessProxy(s, b"s" * 32, FakeAuth(reply), None, LoginThrottle(s, counters, FakeGate()), FakeGate(),
                       None, None, FakeMetrics(), "edge.test")


async def test_an_account_without_the_service_is_refused_and_not_counted_as_a_guess():
    from colony.contracts.auth import AuthCheckReply

    counters = FakeCounters()
    p = proxy(AuthCheckReply.refused("service not enabled"), counters)
    login = await p.login("pop3", "alice@acme.example", "right", "198.51.100.7")
    assert not login.ok and "not enabled" in login.reply and login.code == "AUTH"
    assert p.auth.calls == ["pop"] and not counters.counts


async def test_wrong_passwords_count_and_then_no_check_is_made():
    from colony.contracts.auth import AuthCheckReply

    counters = FakeCounters()
    p = proxy(AuthCheckReply.refused("invalid credentials"), counters, access_login_failures_per_account=2)
    for _ in range(2):
        assert (await p.login("imap", "alice@acme.example", "bad", "198.51.100.7")).code == "AUTH"
    login = await p.login("imap", "alice@acme.example", "bad", "198.51.100.7")
    assert login.code == "SYS/TEMP" and p.auth.calls == ["imap", "imap"]


class FakeFinder:
    """A StoreFinder stand-in: a fixed answer, or the exception of an unreachable region."""

    def __init__(self, target=None, error=None, domain=None) -> None:
        self.target_addr, self.error, self.domain, self.asked = target, error, domain, 0
        self.nc = None

    async def target(self, account, listener, force=False):
        self.asked += 1
        if self.error:
            raise self.error
        return self.target_addr


def regional_proxy(homes: dict[str, str], **settings):
    from colony.contracts.auth import AuthCheckReply
    from colony_edge.access_proxy import AccessProxy

    s = Settings(region="eu", regions="eu,us", **settings)
    return AccessProxy(s, b"s" * 32, FakeAuth(AuthCheckReply(ok=True, account="lee@us.example", domain="us.example")),
                       FakeFinder(), LoginThrottle(s, None, FakeGate()), FakeGate(), None, None, FakeMetrics(),
                       "edge.test", home_region=homes.get)


def test_the_home_region_picks_whose_stores_serve_the_session():
    p = regional_proxy({"us.example": "us", "eu.example": "eu", "moon.example": "moon"})
    region, finder = p.finder_for("us.example")
    assert region == "us" and finder is not p.finder and finder.domain == "us"
    assert p.finder_for("us.example")[1] is finder  # one finder per region, reused
    assert p.finder_for("eu.example") == ("eu", p.finder)
    assert p.finder_for("unhomed.example") == ("eu", p.finder)  # no home region: served here
    assert p.finder_for("moon.example") == ("eu", p.finder)     # not a region of this super cluster


async def test_an_unreachable_home_region_is_a_prompt_temporary_failure():
    import asyncio
    import time

    p = regional_proxy({"us.example": "us"})
    cut = FakeFinder(error=asyncio.TimeoutError(), domain="us")
    p._foreign["us"] = cut
    started = time.monotonic()
    login = await p.login("imap", "lee@us.example", "right", "198.51.100.7")
    assert not login.ok and login.code == "SYS/TEMP"
    assert cut.asked == 1 and time.monotonic() - started < 1  # no retries against a cut link
    assert p.finder.asked == 0  # never this region's (empty) mailbox


async def test_logins_to_a_domain_whose_move_is_sealing_get_a_temporary_failure():
    """While a domain's last copy to its new region runs, nobody may change the old copy: a
    correct password gets SYS/TEMP ([UNAVAILABLE] over IMAP) and no store is asked; other
    phases log in as usual, to the home region's stores."""
    from colony_edge.access_proxy import _imap_code

    phases = {"us.example": "sealing"}
    p = regional_proxy({"us.example": "us"})
    p.move_phase = phases.get
    login = await p.login("imap", "lee@us.example", "right", "198.51.100.7")
    assert not login.ok and login.code == "SYS/TEMP" and "being moved" in login.reply
    assert _imap_code(login.code) == "UNAVAILABLE"
    assert p.finder.asked == 0 and not p._foreign
    for phase in ("routing", "copying", "flipped", None):
        phases["us.example"] = phase
        p = regional_proxy({"us.example": "us"})
        p.move_phase = phases.get
        p._foreign["us"] = FakeFinder(error=RuntimeError("unreachable"), domain="us")  # answers at once
        await p.login("imap", "lee@us.example", "right", "198.51.100.7")
        assert p._foreign["us"].asked > 0, phase  # went on to the home region's stores


async def test_a_login_cancelled_during_its_hand_off_gives_its_account_session_back():
    """The account's session is counted before the store is asked; a client gone meanwhile
    (its session task cancelled) or a failure hand_off does not expect must not keep it."""
    import asyncio

    from colony.contracts.auth import AuthCheckReply
    from colony_edge.access_proxy import AccessProxy

    class CountingGate(FakeGate):
        sessions = 0

        def on_login(self, ip, account):
            self.sessions += 1

        def on_logout(self, ip, account):
            self.sessions -= 1

    class Hanging(FakeFinder):
        async def target(self, account, listener, force=False):
            await asyncio.Event().wait()

    s = Settings()
    gate = CountingGate()
    p = AccessProxy(s, b"s" * 32, FakeAuth(AuthCheckReply(ok=True, account="amy@acme.example")), Hanging(),
                    LoginThrottle(s, None, gate), gate, None, None, FakeMetrics(), "edge.test")
    task = asyncio.create_task(p.login("imap", "amy@acme.example", "right", "198.51.100.7"))
    for _ in range(100):
        if gate.sessions:
            break
        await asyncio.sleep(0.01)
    assert gate.sessions == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert gate.sessions == 0
