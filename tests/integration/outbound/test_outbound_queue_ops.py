"""Operators see and steer the outbound queue: list, per-destination status, show, retry
(now, without back-off) and delete, on a real nats-server; and `colony queue` on top."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from colony.bus import names
from colony.cli.main import app
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.outbound.queue import OutboundQueue, QueueEntryNotFound


async def put(js, message_id: str, destination: str, *recipients: str, not_before=None) -> None:
    mail = OutboundMail.new(message_id=message_id, destination=destination, mail_from="alice@example.com",
                            recipients=[OutboundRecipient(address=r) for r in recipients], size=4,
                            edge_node="edge-1", body=b"x\r\n\r\n", not_before=not_before)
    await js.publish(names.outbound_subject(destination), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})


async def test_list_status_show_retry_delete(js):
    later = datetime.now(UTC) + timedelta(hours=1)
    await put(js, "m1", "a.test", "x@a.test", "y@a.test", not_before=later)
    await put(js, "m2", "b.test", "z@b.test")
    await put(js, "m3", "a.test", "w@a.test")
    queue = OutboundQueue(js)
    entries = await queue.list()
    assert [e.mail.message_id for e in entries] == ["m1", "m2", "m3"]
    assert [e.mail.message_id for e in await queue.list("a.test")] == ["m1", "m3"]
    status = await queue.destinations()
    assert status["a.test"]["messages"] == 2 and status["a.test"]["recipients"] == 3 and status["b.test"]["messages"] == 1
    first = await queue.show(entries[0].sequence)
    assert first.summary()["next_attempt"] == later.isoformat()
    again = await queue.retry(entries[0].sequence)
    assert again.mail.not_before is None and again.mail.generation == 1
    assert [e.mail.message_id for e in await queue.list()] == ["m2", "m3", "m1"]
    await queue.delete(entries[1].sequence)
    assert [e.mail.message_id for e in await queue.list()] == ["m3", "m1"]
    with pytest.raises(QueueEntryNotFound):
        await queue.show(entries[1].sequence)


async def test_colony_queue_cli(js, nats_server, tmp_path):
    await put(js, "m9", "c.test", "q@c.test")
    runner = CliRunner()
    result = await _in_thread(runner.invoke, app, ["queue", "list", "--json", "--nats", nats_server.url,
                                                   "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["message_id"] == "m9" and row["recipients"] == ["q@c.test"]
    result = await _in_thread(runner.invoke, app, ["queue", "delete", str(row["seq"]), "--nats", nats_server.url,
                                                   "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "--yes" in result.output


async def _in_thread(fn, *args):
    import asyncio
    return await asyncio.to_thread(fn, *args)
