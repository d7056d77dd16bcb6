"""The domain move's port over the bus (colony_controller.move_port): the controller, with its
own credentials on a real authenticated nats-server, asks the target region's stores to pull
an account and the source region's stores for sessions and clean-up, each on its region's
subject; a store's refusal, a malformed reply and a region nobody serves are errors the
driver can retry, never a crash.  The stores here are a responder with the mailstore role's
credentials (the stores' side of these questions is tested with the stores)."""

from __future__ import annotations

from datetime import UTC, datetime

import nats
import orjson
import pytest

from cluster_harness import wait_until
from colony import domain_move as dm
from colony.bus import names
from colony.contracts import move_requests as mr
from colony_controller.move_port import BusMovePort

MOVE = dm.Move(domain="acme.example", move_id="m1", source="eu", target="us", phase=dm.Phase.COPYING,
               since=datetime(2026, 1, 1, tzinfo=UTC), epoch=7, accounts=("bob@acme.example",))


async def test_the_controller_asks_each_region_on_its_own_subject(nats_server):
    controller = await nats.connect(nats_server.url, **nats_server.client_options("controller"))
    store = await nats.connect(nats_server.url, **nats_server.client_options("mailstore"))
    asked: list[tuple[str, dict]] = []
    held = {"eu": 1}

    async def serve(msg):
        body = orjson.loads(msg.data)
        asked.append((msg.subject, body))
        match msg.subject.split("."):
            case [_, _, "us", "pull"]:
                reply = mr.PullReply(source_messages=3, target_messages=3, source_digest="a", target_digest="a",
                                     source_position=42)
            case [_, _, "eu", "sessions"]:
                reply = mr.SessionsReply(sessions=2, accounts_held=held["eu"])
            case [_, _, "eu", "remove"]:
                held["eu"] = 0
                reply = mr.RemoveReply(removed=len(body["accounts"]))
            case _:
                reply = mr.ErrorReply(error=f"not this region's question: {msg.subject}")
        await msg.respond(reply.model_dump_json().encode())

    await store.subscribe(names.DOMAIN_MOVE_REQUESTS, queue=names.QUEUE_DOMAIN_MOVE, cb=serve)
    await store.flush()
    port = BusMovePort(controller, accounts=lambda d: _const([f"bob@{d}"]), epoch=lambda: 9, timeout=5)
    try:
        async def first():
            try:
                return await port.copy_account(MOVE, "bob@acme.example", 2, 17)
            except mr.MoveRequestError:  # the server has not seen the subscription yet
                return None
        report = await wait_until(first, 10, "a pull's report")
        assert (report.source_messages, report.target_messages, report.source_position) == (3, 3, 42)
        subject, body = asked[-1]
        assert subject == "colony.move.us.pull"
        assert body == {"domain": "acme.example", "move_id": "m1", "source": "eu", "target": "us", "epoch": 9,
                        "address": "bob@acme.example", "copy_pass": 2, "from_position": 17}
        assert await port.source_sessions(MOVE) == 2
        assert asked[-1][0] == "colony.move.eu.sessions"
        assert await port.source_cleaned(MOVE) is False
        await port.clean_up_source(MOVE, MOVE.accounts)
        assert asked[-1] == ("colony.move.eu.remove", {**asked[-1][1], "accounts": ["bob@acme.example"]})
        assert await port.source_cleaned(MOVE) is True
        assert await port.accounts("acme.example") == ["bob@acme.example"]
        # a move the other way asks us for sessions: this responder refuses, and the error says why
        backwards = dm.Move(**{**MOVE.__dict__, "source": "us", "target": "eu"})
        with pytest.raises(mr.MoveRequestError, match="not this region's question"):
            await port.source_sessions(backwards)
    finally:
        await store.close()
    # nobody serves the region any more (cut off, or no store there yet)
    with pytest.raises(mr.MoveRequestError, match="colony.move.eu.sessions"):
        await port.source_sessions(MOVE)
    await controller.close()


def test_a_malformed_reply_is_an_error_not_a_crash():
    with pytest.raises(mr.MoveRequestError, match="malformed SessionsReply"):
        mr.decode_reply(b'{"sessions": -1, "accounts_held": 0}', mr.SessionsReply)
    with pytest.raises(mr.MoveRequestError, match="malformed PullReply"):
        mr.decode_reply(b"not json", mr.PullReply)
    with pytest.raises(ValueError):
        mr.RemoveRequest(domain="a.example", move_id="m", source="eu", target="us", epoch=1, accounts=(),
                         surprise=True)


async def _const(value):
    return value
