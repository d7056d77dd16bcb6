"""A burst of cross-region mail is handed over whole, without the source keeper.

eu's MAIL sources us's work-queue MAIL (filter ``colony.mail.eu.>``, ``opt_start_seq`` 1, through
the hub).  ``bench/regions.py`` saw the last message or two of a burst stored in eu ~4.8 s after
the others, the time the controller's keeper takes to restart a silent source, so the source
was suspected of stopping before the tail.  Here the keeper is off and nothing but the source
moves mail: bursts as an edge publishes them (16 connections, ``Nats-Msg-Id``, partitioned
subjects, the servers syncing every write as ``colony up`` runs them) are timed from the last
``250`` to the last arrival in eu's MAIL.  A source that stopped would be restarted only by the
server's own stall detection (10 s and more), so ``TAIL_BOUND`` -- under the keeper's 3 s --
shows the source itself hands the tail over.  With ``$JS.FC.>`` added to the links' deny lists
(a lost flow-control reply) the third burst never completes and the test fails.  (The stall
was the mail store's fetch: ``bench/README.md``.)
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
from colony.regions import SOURCE_STALE_AFTER
from colony.settings import Settings
from tools import free_ports

# alone under pytest-xdist: TAIL_BOUND is a time, measured with the test's own 16 connections
# and three servers as the only load besides the machine's.
pytestmark = [pytest.mark.slow, pytest.mark.alone]

REGIONS = ["eu", "us"]
BURSTS = 3
MESSAGES = 400
CONNECTIONS = 16
TAIL_BOUND = 2.5  # seconds from the burst's last 250 to its last message in eu; load 20 included

assert TAIL_BOUND < SOURCE_STALE_AFTER


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (tests/tools.py: one the kernel handed out
    for a bind may go to the next outgoing connection before the server binds it)."""
    return free_ports(1)[0]


@pytest.fixture
async def linked(tmp_path):
    leaf = _free_port()
    hub = EmbeddedNats(tmp_path / "hub", server_name="hub", jetstream_domain=names.HUB_JS_DOMAIN,
                       leafnode_listen=f"127.0.0.1:{leaf}", sync_always=False)
    servers = {r: EmbeddedNats(tmp_path / r, server_name=r, jetstream_domain=names.js_domain(r),
                               leafnode_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
                               leafnode_deny=names.REGION_LOCAL_SUBJECTS)
               for r in REGIONS}
    conns = []
    try:
        hub.start()
        for server in servers.values():
            server.start()
        # us's MAIL first: eu's source then finds it at once, not after the server's back-off.
        for region in ("us", "eu"):
            nc = await nats.connect(servers[region].url)
            conns.append(nc)
            await ensure_schema(nc.jetstream(), Settings(region=region, regions=",".join(REGIONS), primary_region="eu"))
        yield servers
    finally:
        for nc in conns:
            await nc.close()
        for server in (*servers.values(), hub):
            server.stop()


async def test_a_burst_crosses_whole_without_the_keeper(linked):
    eu = await nats.connect(linked["eu"].url)
    edges = [await nats.connect(linked["us"].url) for _ in range(CONNECTIONS)]
    arrived: dict[bytes, float] = {}

    async def stored(msg):
        arrived[msg.data.split(b"|", 1)[0]] = time.monotonic()
        await msg.ack()

    try:
        await eu.jetstream().subscribe(names.mail_region_filter("eu"), durable="probe", cb=stored, manual_ack=True,
                                       config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))

        async def publish(edge, key: bytes, partition: int) -> None:
            await edge.jetstream().publish(names.mail_subject("eu", "acme.example", partition), key + b"|" + b"x" * 1536,
                                           headers={"Nats-Msg-Id": key.decode()})

        async def crossed(*keys: bytes) -> bool:
            return all(k in arrived for k in keys)

        await publish(edges[0], b"first", 0)
        await wait_until(lambda: crossed(b"first"), 60, "the first message in eu's MAIL")

        for burst in range(BURSTS):
            keys = [f"b{burst}-c{c}-m{i}".encode() for c in range(CONNECTIONS) for i in range(MESSAGES // CONNECTIONS)]

            async def connection(c: int) -> None:
                for i, key in enumerate(keys[c::CONNECTIONS]):
                    await publish(edges[c], key, i % names.MAIL_PARTITIONS)

            await asyncio.gather(*(connection(c) for c in range(CONNECTIONS)))
            last_250 = time.monotonic()
            await wait_until(lambda: crossed(*keys), 30, f"burst {burst} in eu's MAIL")
            tail = max(arrived[k] for k in keys) - last_250
            assert tail < TAIL_BOUND, f"burst {burst}: its last message reached eu {tail:.2f}s after the last 250"
    finally:
        for nc in (eu, *edges):
            await nc.close()
