"""Asking the active controller to do something, from the CLI or the admin API.

During a failover there is briefly no controller (no responders) or a deposed one (503):
both are retried until the deadline, so an operator's `colony drain` survives a handover.
"""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from colony.bus import names
from colony.cluster.commands import ControllerRequest, Reply


async def ask_controller(nc: Client, command: str, node: str | None = None, deadline: float = 10.0) -> Reply:
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    payload = ControllerRequest(command=command, node=node).model_dump_json().encode()
    last = "no controller is active"
    while True:
        try:
            msg = await nc.request(names.CONTROLLER_API, payload, timeout=max(0.5, min(6.0, until - loop.time())))
            reply = Reply.model_validate(json.loads(msg.data))
            if reply.status != 503:
                return reply
            last = reply.error or last
        except NoRespondersError:
            last = "no controller is active"
        except NatsTimeout:
            last = "the controller did not answer"
        if loop.time() >= until:
            return Reply(ok=False, status=503, error=f"{last} (gave up after {deadline:g}s)")
        await asyncio.sleep(0.2)
