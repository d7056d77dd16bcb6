"""The contracts under the bus's permissions: an edge identity may run a DirectoryCache and
call the directory subjects; the admin API identity may serve them."""

from __future__ import annotations

import nats
import pytest
import orjson

from colony.bus import names
from colony.bus.connection import connect_options
from colony.bus.schema import ensure_schema
from colony.contracts.cache import DirectoryCache
from colony.contracts.clients import DirectoryClient
from colony.contracts.recipients import Accepted, RecipientResult, RecipientsReply, RecipientsRequest, resolve_all
from colony.settings import Settings


async def as_role(nats_server, role: str):
    return await nats.connect(nats_server.url, **connect_options(nats_server.seed_file(role)))


async def test_an_edge_runs_the_cache_and_asks_the_admin_api(nats_server):
    operator = await nats.connect(nats_server.url, **connect_options(nats_server.seed_file("operator")))
    await ensure_schema(operator.jetstream(), Settings(nats_url=nats_server.url))
    admin = await as_role(nats_server, "admin-api")
    edge = await as_role(nats_server, "edge")
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
        # ...while the edge itself cannot write the directory (the permissions are real)
        edge_kv = await edge.jetstream().key_value(names.BUCKET_DIRECTORY)
        with pytest.raises(Exception):
            await edge_kv.put(names.directory_key("address", "evil@secure.example"), b"{}")

        # the admin API's side of colony.dir.recipients, answering from the same resolver
        async def serve(msg):
            request = RecipientsRequest.from_bytes(msg.data)
            results = resolve_all(cache, request.recipients)
            await msg.respond(RecipientsReply(results=[RecipientResult.of(r) for r in results]).to_bytes())

        await admin.subscribe(names.DIRECTORY_RECIPIENTS, queue=names.QUEUE_ADMIN, cb=serve)
        await admin.flush()
        (answer,) = await DirectoryClient(edge, timeout=10).resolve(["amy@secure.example"])
        assert answer.ok and answer.mailboxes[0].home_region == "eu"
    finally:
        await cache.stop()
        for nc in (edge, admin, operator):
            await nc.close()
