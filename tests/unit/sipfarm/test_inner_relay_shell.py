"""Two farm shells in one process handing a datagram over the inner relay, over real UDP
sockets on 127.0.0.1: the owner's answer reaches the phone through the asker, the trace
context rides in the frame, and an owner whose port is closed is passed over."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm import workload
from colony_sipfarm.inner_frames import RelayKey
from colony_sipfarm.workload import SipWorkload, _bind_udp, _UdpSocket
from test_farm import PHONE, farm, register  # noqa: F401 (farm: the fixture)


class PhoneSide:
    """The asker's SIP socket: what it sends to phones."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


async def _pair(farm) -> tuple[SipWorkload, SipWorkload]:
    loop = asyncio.get_running_loop()
    shells = []
    for node_id in ("sipfarm-1", "sipfarm-2"):
        shell = SipWorkload(Settings())
        shell.farm, shell.farm_address = farm, ("192.0.2.100", 5060)
        shell._runtime = SimpleNamespace(node_id=node_id, nc=None)
        shell._relay_key = RelayKey.from_secret(b"k" * 32)
        shell.inner = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), shell._inner_received)
        shell.inner_address = ("127.0.0.1", shell.inner.get_extra_info("sockname")[1])
        shell.udp = PhoneSide()
        shells.append(shell)
    asker, owner = shells
    asker._inner_peers["sipfarm-2"] = (socket.AF_INET, owner.inner_address)
    owner._inner_peers["sipfarm-1"] = (socket.AF_INET, asker.inner_address)
    asker._owner = lambda parsed: "sipfarm-2"
    return asker, owner


async def _until(probe, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return found


async def _close(*shells: SipWorkload) -> None:
    for shell in shells:
        shell.inner.close()
        shell._close_inner_sockets()


async def test_the_owner_answers_through_the_asker_and_the_trace_is_one(farm, monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(workload, "_tracer", provider.get_tracer("test"))
    asker, owner = await _pair(farm)
    asker._traced = owner._traced = True
    try:
        packet = register()
        await asker._handle(packet, PHONE, farm.parse(packet), time.monotonic())
        assert asker.udp.sent == [] and owner.udp.sent == []      # nothing yet: the owner has it
        [(data, addr)] = await _until(lambda: asker.udp.sent)
        assert parse_message(data).status == 401 and addr == PHONE[1:]
        assert owner.udp.sent == [] and farm.metrics.relays._value.get() == 1
        spans = {s.name: s for s in exporter.get_finished_spans()}
        handled, received = spans["sip.handle"], spans["sip REGISTER"]
        assert handled.context.trace_id == received.context.trace_id
        assert handled.parent.span_id == received.context.span_id
    finally:
        await _close(asker, owner)


async def test_without_a_tracer_provider_the_frame_carries_no_trace(farm):
    asker, owner = await _pair(farm)
    frames = []
    received = owner._inner_received
    owner.inner._received = lambda data, source: (frames.append(data), received(data, source))
    try:
        packet = register()
        await asker._handle(packet, PHONE, farm.parse(packet), time.monotonic())
        await _until(lambda: asker.udp.sent)
        assert frames[0].split(b"\n", 1)[0].endswith(b" -")
    finally:
        await _close(asker, owner)


async def test_an_owner_whose_port_is_closed_is_passed_over_and_the_packet_handled_here(farm):
    asker, owner = await _pair(farm)
    owner.inner.close()          # as a killed member: its port answers ICMP port-unreachable
    try:
        async def relayed() -> bool | None:
            return asker._relay_inner("sipfarm-2", register(), PHONE)
        # The first datagram goes out (and is lost); the refusal comes back on a later send.
        results = [await relayed()]
        deadline = time.monotonic() + 5
        while results[-1] is not False:
            assert time.monotonic() < deadline, results
            await asyncio.sleep(0.01)
            results.append(await relayed())
        assert results[0] is True and "sipfarm-2" in asker._suspect
        # Passed over, it is no packet's owner (ready_members leaves it out); this one is
        # handled here: the phone gets its challenge from this member.
        asker._owner = lambda parsed: None if "sipfarm-2" in asker._suspect else "sipfarm-2"
        packet = register()
        await asker._handle(packet, PHONE, farm.parse(packet), time.monotonic())
        [(data, _)] = await _until(lambda: asker.udp.sent)
        assert parse_message(data).status == 401
    finally:
        await _close(asker)


async def test_a_datagram_this_member_cannot_send_for_its_own_reasons_goes_over_the_bus(farm):
    """No descriptor for the relay's socket (EMFILE) is this member's trouble, not the
    owner's death: passed over, a live owner's calls were handled here for SUSPECT_FOR."""
    import errno

    asker, owner = await _pair(farm)

    def no_descriptors(peer):
        raise OSError(errno.EMFILE, "Too many open files")
    asker._inner_socket = no_descriptors
    try:
        assert asker._relay_inner("sipfarm-2", register(), PHONE) is None    # None: ask over the bus
        assert "sipfarm-2" not in asker._suspect
    finally:
        await _close(asker, owner)
