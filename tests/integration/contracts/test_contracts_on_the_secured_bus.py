"""The contracts under the bus's permissions: an edge identity may run a DirectoryCache and
call the directory subjects; the admin API identity may serve them."""

from __future__ import annotations

import asyncio
import re
import time

import nats
import orjson
import pytest
from cluster_harness import wait_until
from nats.js.errors import KeyNotFoundError

from colony.bus import names
from colony.bus.connection import connect_options
from colony.bus.schema import ensure_schema
from colony.contracts.cache import DirectoryCache
from colony.contracts.clients import DirectoryClient, DirectoryUnavailable
from colony.contracts.recipients import Accepted, RecipientResult, RecipientsReply, RecipientsRequest, resolve_all
from colony.settings import Settings

# How long the responder may take to be heard, all attempts together.  Not a latency bound:
# a healthy bus answers the first attempt in milliseconds; this only bounds how late a
# responder that never answers is reported.
ANSWERED_WITHIN = 60.0


async def as_role(nats_server, role: str, **options):
    return await nats.connect(nats_server.url, **connect_options(nats_server.seed_file(role)), **options)


async def ask_until_answered(client: DirectoryClient, recipients: list[str], within: float = ANSWERED_WITHIN):
    """``client.resolve`` asked again after each ``DirectoryUnavailable``, as an edge's sender
    does after its 451: one request has a single fixed window (``client.timeout``), and a
    test process or nats-server descheduled past it on a busy CI box loses that one request
    although nothing is wrong.  Fails with the last refusal once ``within`` has passed."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await client.resolve(recipients)
        except DirectoryUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)  # a no-responder answer comes back at once: no busy loop


async def test_an_edge_runs_the_cache_and_asks_the_admin_api(nats_server):
    operator = await nats.connect(nats_server.url, **connect_options(nats_server.seed_file("operator")))
    await ensure_schema(operator.jetstream(), Settings(nats_url=nats_server.url))
    admin = await as_role(nats_server, "admin-api")
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:  # the server's -ERR for a denied publish
        refusals.append(str(exc).lower())

    edge = await as_role(nats_server, "edge", error_cb=on_error)
    cache = DirectoryCache(edge)
    try:
        kv = await admin.jetstream().key_value(names.BUCKET_DIRECTORY)
        await kv.put(names.directory_key("domain", "secure.example"), orjson.dumps(
            {"kind": "domain", "name": "secure.example", "state": "active", "home_region": "eu"}))
        await kv.put(names.directory_key("address", "amy@secure.example"), orjson.dumps(
            {"kind": "account", "address": "amy@secure.example", "state": "active"}))
        await cache.start()
        await cache.wait_loaded(timeout=30)
        assert isinstance(cache.resolve("amy@secure.example"), Accepted)
        # ...while the edge itself cannot write the directory (the permissions are real): the
        # server refuses the publish itself (an -ERR, not an acknowledgement that never comes),
        # and nothing reaches the bucket
        evil = names.directory_key("address", "evil@secure.example")
        await edge.publish(f"$KV.{names.BUCKET_DIRECTORY}.{evil}", b"{}")
        await edge.flush()
        await wait_until(lambda: _true(any(f"publish to \"$kv.{names.BUCKET_DIRECTORY}.{evil}\"" in r
                                           and "permissions violation" in r for r in refusals)),
                         20, "the server to refuse the edge's write to the directory")
        with pytest.raises(KeyNotFoundError):
            await kv.get(evil)

        # the admin API's side of colony.dir.recipients, answering from the same resolver
        async def serve(msg):
            request = RecipientsRequest.from_bytes(msg.data)
            results = resolve_all(cache, request.recipients)
            await msg.respond(RecipientsReply(results=[RecipientResult.of(r) for r in results]).to_bytes())

        await admin.subscribe(names.DIRECTORY_RECIPIENTS, queue=names.QUEUE_ADMIN, cb=serve)
        await admin.flush()
        (answer,) = await ask_until_answered(DirectoryClient(edge), ["amy@secure.example"])
        assert answer.ok and answer.mailboxes[0].home_region == "eu"
    finally:
        await cache.stop()
        for nc in (edge, admin, operator):
            await nc.close()


async def test_no_responder_and_a_silent_one_are_told_apart(nats_server):
    """Both are a temporary failure, but an operator reading the log needs to know which:
    nobody serving the subject answers at once (the server's no-responders status), a
    responder that keeps silent only after the client's timeout."""
    admin = await as_role(nats_server, "admin-api")
    edge = await as_role(nats_server, "edge")
    try:
        # a generous timeout: the no-responders status must come back long before it
        with pytest.raises(DirectoryUnavailable, match="no responder on colony.dir.recipients"):
            await DirectoryClient(edge, timeout=30).resolve(["amy@secure.example"])

        async def silent(msg):
            pass

        await admin.subscribe(names.DIRECTORY_RECIPIENTS, queue=names.QUEUE_ADMIN, cb=silent)
        await admin.flush()
        # The subscription is the server's once flushed, yet under a loaded CI run the edge's
        # next request still met "no responders" once: asked again until the silent responder
        # is reached (a deadline, not a bet on one request), then its silence must read as such.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            with pytest.raises(DirectoryUnavailable) as unavailable:
                await DirectoryClient(edge, timeout=0.5).resolve(["amy@secure.example"])
            message = str(unavailable.value)
            if "no responder" not in message or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert re.search(r"no answer on colony.dir.recipients within 0.5s", message), message
    finally:
        for nc in (edge, admin):
            await nc.close()


async def _true(value: bool) -> bool:
    return value
