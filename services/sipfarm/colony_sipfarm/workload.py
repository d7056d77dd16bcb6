"""The SIP farm member's asyncio shell: UDP and TCP listeners around ``SipFarm``.

Each datagram or framed stream message is handed to ``SipFarm.handle`` in a task of its own
(bounded: at most ``MAX_INFLIGHT`` at once, more UDP packets are dropped as a full socket
buffer would); the answers go out on the UDP socket, on the TCP connection to that peer
(kept by (host, port), as RFC 3261 §18 reuses connections), or -- when another member holds
that connection -- over ``colony.sip.relay.<member>`` with the trace context in the headers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from contextlib import suppress

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from colony.bus import names
from colony.bus.tokens import from_token
from colony.contracts.auth import AuthClient
from colony.counters import SharedCounters
from colony.events import UsageRecorded
from colony.protocols.sip.parser import SipParseError, StreamFramer
from colony.protocols.sip.transaction import Destination
from colony.settings import Settings
from colony.telemetry import extract_context, inject_headers

from colony_sipfarm.bindings import BindingStore
from colony_sipfarm.farm import Outbound, SipFarm

log = logging.getLogger("colony.sipfarm")

MAX_INFLIGHT = 2000
MAX_CONNECTIONS = 10_000


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, workload: SipWorkload) -> None:
        self.workload = workload

    def datagram_received(self, data: bytes, addr) -> None:
        self.workload.received(data, ("UDP", addr[0], addr[1]))


class SipWorkload:
    role = "sipfarm"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accepting = True
        self.farm: SipFarm | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.server: asyncio.Server | None = None
        self.connections: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self.counters: SharedCounters | None = None
        self._inflight: set[asyncio.Task] = set()
        self._runtime = None

    async def start(self, runtime) -> dict[str, str]:
        self._runtime = runtime
        s = self.settings
        js = runtime.nc.jetstream()
        kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
        self.counters = SharedCounters(js, runtime.node_id, flush_interval=s.rate_counter_flush_interval)
        await self.counters.start(runtime.task_owner)
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(s.host, s.sip_port))
        port = self.udp.get_extra_info("sockname")[1]
        # TCP on the same port number as UDP (phones expect both on one port).
        self.server = await asyncio.start_server(self._connection, s.host, port, reuse_address=True)

        async def publish_usage(event: UsageRecorded) -> None:
            await runtime.publish_event(names.usage_subject(event.domain), event)

        self.farm = SipFarm(
            s, runtime.node_id, store=BindingStore(kv, time.time), dialogs=kv, auth=AuthClient(runtime.nc),
            counters=self.counters, secret=await self._secret(kv), address=(s.advertised_host, port),
            registry=runtime.metrics.registry, publish_usage=publish_usage)
        await runtime.nc.subscribe(names.sip_relay_subject(runtime.node_id), cb=self._on_relay)
        return {"sip": f"{s.advertised_host}:{port}"}

    async def _secret(self, kv) -> bytes:
        """The farm-wide nonce secret: the first member makes it, the others read it."""
        fresh = base64.b64encode(os.urandom(32))
        with suppress(KeyWrongLastSequenceError):
            await kv.create(names.SIP_NONCE_SECRET_KEY, fresh)
        try:
            return base64.b64decode((await kv.get(names.SIP_NONCE_SECRET_KEY)).value)
        except KeyNotFoundError:
            return base64.b64decode(fresh)

    # --- input ----------------------------------------------------------------------------

    def received(self, data: bytes, source: Destination) -> None:
        if len(self._inflight) >= MAX_INFLIGHT or self.farm is None:
            return      # overloaded: as a full socket buffer; the phone retransmits
        task = asyncio.create_task(self._handle(data, source))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _handle(self, data: bytes, source: Destination) -> None:
        try:
            out = await self.farm.handle(data, source)
        except Exception:
            log.exception("SIP message from %s:%s failed", source[1], source[2])
            return
        for item in out:
            await self._send(item)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        key = (peer[0], peer[1])
        if len(self.connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections[key] = writer
        framer = StreamFramer(self.settings.sip_max_message_size)
        try:
            while data := await reader.read(65536):
                framer.feed(data)
                while True:
                    try:
                        message = framer.next_message()
                    except SipParseError:
                        return     # unframeable: the stream cannot continue
                    if framer.pings:
                        framer.pings = 0
                        writer.write(StreamFramer.PONG)
                    if message is None:
                        break
                    self.received(message, ("TCP", key[0], key[1]))
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.pop(key, None)
            writer.close()

    # --- output ---------------------------------------------------------------------------

    async def _send(self, item: Outbound) -> None:
        transport, host, port = item.destination
        if item.member and item.member != names.node_key(self._runtime.node_id):
            self.farm.metrics.relays.inc()
            payload = json.dumps({"d": base64.b64encode(item.data).decode(), "t": [transport, host, port]}).encode()
            await self._runtime.nc.publish(names.sip_relay_subject(from_token(item.member)), payload,
                                           headers=inject_headers() or None)
            return
        await self._emit(item.data, item.destination)

    async def _emit(self, data: bytes, destination: Destination) -> None:
        transport, host, port = destination
        if transport == "UDP":
            if self.udp is not None:
                self.udp.sendto(data, (host, port))
            return
        writer = self.connections.get((host, port))
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
            except (OSError, TimeoutError):
                log.info("no TCP connection to %s:%s for a SIP message", host, port)
                return
            self.connections[(host, port)] = writer
            asyncio.create_task(self._read_outbound(reader, writer, (host, port)))
        writer.write(data)

    async def _read_outbound(self, reader, writer, key) -> None:
        framer = StreamFramer(self.settings.sip_max_message_size)
        try:
            while data := await reader.read(65536):
                framer.feed(data)
                while (message := framer.next_message()) is not None:
                    self.received(message, ("TCP", key[0], key[1]))
        except (ConnectionError, OSError, SipParseError):
            pass
        finally:
            self.connections.pop(key, None)
            writer.close()

    async def _on_relay(self, msg) -> None:
        try:
            body = json.loads(msg.data)
            data = base64.b64decode(body["d"])
            destination = tuple(body["t"])
        except (ValueError, KeyError, TypeError):
            return
        from opentelemetry import trace
        with trace.get_tracer("colony.sipfarm").start_as_current_span("sip.relay", context=extract_context(msg.headers)):
            await self._emit(data, destination)

    # --- lifecycle ------------------------------------------------------------------------

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    def active_work(self) -> int:
        return len(self._inflight)

    async def hand_over(self) -> None:
        return None     # bindings and dialogs are on the bus already

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections.values()):
            writer.close()
        if self.counters is not None:
            await self.counters.stop()
