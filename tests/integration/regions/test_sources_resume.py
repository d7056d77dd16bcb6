"""Cross-region mail does not wait out the server's source back-off.

Two regions (eu, us) and their hub as in test_regions_bus, each region's controller played by
its ``SourceKeeper``.  eu's MAIL sources us's (filter ``colony.mail.eu.*``).  Left to itself,
nats-server 2.15 sets up a source whose first consumer request went unanswered (us not linked
yet) 30 s later plus a 10 s back-off, one refused (us's MAIL not created yet) after 10 s, and
one that stalled during a cut of the link after the same 30 s + 10 s once its retry was lost in
the cut (``stream.go``: ``srcConsumerWaitTime``, ``calculateRetryBackoff``,
``sourceHealthCheckInterval``) -- measured here: 35-40 s for the first message after start,
15 s after a 45 s cut.

The bound: the keeper looks once a second (``SOURCE_CHECK_INTERVAL``) and restarts a source
that never heard from its region at once, one that heard nothing for ``SOURCE_STALE_AFTER``
(3 s) otherwise; the restart is two stream updates, a round trip to us and the server's
0.1-0.2 s jitter.  About 1-2 s on a quiet machine (0.96 s measured); ``BOUND`` leaves room for
a load of 20 and stays under the server's shortest back-off (10 s), so a test that passes
shows the keeper, not the server's own retry, brought the mail over.
"""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from cluster_harness import wait_until
from colony.bus import names
from colony.bus.schema import ensure_schema
from colony.natsd import EmbeddedNats
from colony.settings import Settings
from colony_controller.source_keeper import SourceKeeper
from tools import free_ports

REGIONS = ["eu", "us"]
BOUND = 8.0
SERVER_SHORTEST_BACKOFF = 10.0  # calculateRetryBackoff(1)
# Long enough that the server has noticed the stall (a 10 s ticker, 10 s without a heartbeat)
# and sent its retry into the cut, where nobody answers it.
CUT = 22.0

assert BOUND < SERVER_SHORTEST_BACKOFF


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (tests/tools.py: one the kernel handed out
    for a bind may go to the next outgoing connection before the server binds it)."""
    return free_ports(1)[0]


def _settings(region: str) -> Settings:
    return Settings(region=region, regions=",".join(REGIONS), primary_region="eu")


class Regions:
    """Started one piece at a time, so a test can create eu's streams before us exists."""

    def __init__(self, tmp_path):
        leaf = _free_port()
        self.hub = EmbeddedNats(tmp_path / "hub", server_name="hub", jetstream_domain=names.HUB_JS_DOMAIN,
                                leafnode_listen=f"127.0.0.1:{leaf}", sync_always=False)
        self.servers = {r: EmbeddedNats(tmp_path / r, server_name=r, jetstream_domain=names.js_domain(r),
                                        leafnode_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
                                        leafnode_deny=names.REGION_LOCAL_SUBJECTS, sync_always=False)
                        for r in REGIONS}
        self.nc: dict = {}
        self.keepers: dict[str, SourceKeeper] = {}
        self._tasks: list[asyncio.Task] = []

    async def start_region(self, region: str, schema: bool = True) -> None:
        self.servers[region].start()
        self.nc[region] = await nats.connect(self.servers[region].url)
        if schema:
            await self.create_schema(region)

    async def create_schema(self, region: str) -> None:
        await ensure_schema(self.js(region), _settings(region))
        keeper = self.keepers[region] = SourceKeeper(self.nc[region], _settings(region))
        self._tasks.append(asyncio.create_task(keeper.run()))

    def js(self, region: str):
        return self.nc[region].jetstream()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for nc in self.nc.values():
            await nc.close()
        for server in (*self.servers.values(), self.hub):
            server.stop()


@pytest.fixture
def stop_servers_anyway(request):
    """A synchronous finalizer: when pytest-timeout interrupts the event loop, the async
    fixture's teardown below may never run, and its three nats-servers would outlive the run."""
    servers = []
    request.addfinalizer(lambda: [server.stop() for server in servers])
    return servers


@pytest.fixture
async def regions(tmp_path, stop_servers_anyway):
    r = Regions(tmp_path)
    stop_servers_anyway.extend([*r.servers.values(), r.hub])
    yield r
    await r.close()


async def _arrives(regions: Regions, body: bytes, timeout: float = 60.0) -> float:
    """Seconds until ``body`` is in eu's MAIL (read as eu's mail stores read it)."""
    start = time.monotonic()
    sub = await regions.js("eu").pull_subscribe(names.mail_region_filter("eu"), durable=names.MAILSTORE_CONSUMER,
                                                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))

    async def probe():
        try:
            for msg in await sub.fetch(10, timeout=0.5):
                await msg.ack_sync()
                if msg.data == body:
                    return True
        except (TimeoutError, nats.errors.TimeoutError):  # nothing yet
            pass
        return False

    await wait_until(probe, timeout, f"{body!r} in eu's MAIL")
    return time.monotonic() - start


async def _send(regions: Regions, body: bytes) -> None:
    await regions.js("us").publish(names.mail_subject("eu", "acme.example"), body)  # the edge's 250


@pytest.mark.parametrize("late", ["us-server", "us-stream"])
async def test_the_first_mail_crosses_soon_after_the_other_region_comes_up(regions, late):
    """eu's MAIL is created while us's server is not up yet (its source's consumer request goes
    unanswered), or while us is up and linked but has no MAIL yet (the request is refused)."""
    regions.hub.start()
    if late == "us-server":
        await regions.start_region("eu")
        await regions.start_region("us")
    else:
        await regions.start_region("us", schema=False)
        await regions.start_region("eu", schema=False)

        async def linked():
            try:
                return await regions.nc["eu"].request(f"{names.js_api_prefix('us')}.INFO", b"", timeout=0.5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return None
        await wait_until(linked, 30, "us's JetStream API to answer in eu")
        await regions.create_schema("eu")

        async def refused():
            info = await regions.js("eu").stream_info(names.STREAM_MAIL)
            return any(s.error for s in info.sources or [])
        await wait_until(refused, 30, "eu's source to be refused by us")
        await regions.create_schema("us")
    await _send(regions, b"first")
    waited = await _arrives(regions, b"first")
    assert waited < BOUND, f"the first cross-region mail waited {waited:.1f}s"
    if late == "us-stream":
        # The refusal was awaited above, so the source was stalled: only the keeper brings it
        # back this soon. With us's server late, a busy machine may link us before eu's source
        # sends its first request: no stall, nothing to restart, and the bound is what holds.
        assert regions.keepers["eu"].restarted >= 1
    # and the source keeps reading: the next one crosses at once
    await _send(regions, b"second")
    assert await _arrives(regions, b"second") < BOUND


async def test_mail_accepted_during_a_cut_crosses_soon_after_the_link_is_back(regions):
    regions.hub.start()
    await regions.start_region("eu")
    await regions.start_region("us")
    await _send(regions, b"before")
    await _arrives(regions, b"before")
    restarts = regions.keepers["eu"].restarted
    regions.hub.stop()
    await _send(regions, b"during")         # stored in us: the sender got its 250

    async def cut_long_enough():
        (source,) = (await regions.js("eu").stream_info(names.STREAM_MAIL)).sources
        return source.active is not None and source.active / 1e9 >= CUT
    await wait_until(cut_long_enough, CUT + 30, f"eu's source to have heard nothing from us for {CUT:g}s")
    assert regions.keepers["eu"].restarted == restarts  # nothing to read during a cut: left alone
    regions.hub.start()
    waited = await _arrives(regions, b"during")
    assert waited < BOUND, f"mail accepted during the cut waited {waited:.1f}s after the link was back"
    await _send(regions, b"after")
    assert await _arrives(regions, b"after") < BOUND


async def test_a_stream_left_without_its_source_gets_it_back(regions):
    """A restart is two updates; if the second is lost the stream lacks the source until the
    keeper's next look puts its configuration back."""
    from dataclasses import replace

    from colony.bus.schema import sourcing_stream_configs

    regions.hub.start()
    await regions.start_region("eu")
    await regions.start_region("us")
    (mail,) = [c for c in sourcing_stream_configs(_settings("eu")) if c.name == names.STREAM_MAIL]
    cut_short = await regions.js("eu").update_stream(replace(mail, sources=[]))   # the first update only
    assert not cut_short.config.sources

    async def restored():
        return (await regions.js("eu").stream_info(names.STREAM_MAIL)).config.sources
    await wait_until(restored, 30, "eu's MAIL to get its source back")
    await _send(regions, b"after the repair")
    assert await _arrives(regions, b"after the repair") < BOUND
