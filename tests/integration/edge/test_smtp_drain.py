"""Draining an edge: new SMTP connections are told 421 4.3.2, a session in progress finishes
its message (250, durably in MAIL), then the edge reports drained."""

from __future__ import annotations

import socket

import pytest

from cluster_harness import wait_until
from colony.contracts.mail import InboundMail
from colony.cluster.control import ask_controller

pytestmark = pytest.mark.slow


async def test_drain_lets_the_open_session_finish(edge):
    cluster = edge.harness
    cluster.start("controller", "controller-1")
    await cluster.wait_controller(timeout=60)
    client = edge.smtp()
    client.ehlo()
    client.mail("alice@remote.test")
    assert client.rcpt("bob@example.com")[0] == 250

    reply = await ask_controller(await cluster.client(), "drain", "edge-1")
    assert reply.ok, reply.error

    async def refused():
        with socket.create_connection((edge.host, edge.port), timeout=10) as sock:
            return sock.makefile("rb").readline().startswith(b"421 4.3.2")
    await wait_until(refused, 30, "new connections to be refused with 421")

    code, text = client.data(b"From: alice@remote.test\r\nSubject: during drain\r\n\r\nstill delivered\r\n")
    assert code == 250, text
    client.quit()
    await cluster.wait_state("edge-1", "NOT_READY", drained=True, timeout=30)
    msgs = await edge.stream_messages()
    assert len(msgs) == 1 and b"still delivered" in InboundMail.from_bytes(msgs[0].data).body
