"""The member's UDP socket (workload._UdpSocket): drained up to UDP_DRAIN datagrams per
readiness, every datagram handed to the shell with its source; sends that meet a full kernel
buffer are queued (bounded) and flushed when the socket is writable."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm import workload
from colony_sipfarm.workload import UDP_DRAIN, SipWorkload, _bind_udp, _UdpSocket
from test_farm import farm, register  # noqa: F401 (farm: the fixture)


async def _wait_for(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline
        await asyncio.sleep(0.005)


async def test_one_readiness_reads_at_most_udp_drain_datagrams_and_the_rest_on_later_passes():
    loop = asyncio.get_running_loop()
    got: list = []
    sock = await _bind_udp("127.0.0.1", 0)
    udp = _UdpSocket(loop, sock, lambda data, source: got.append((data, source)))
    loop.remove_reader(sock.fileno())       # read by hand below, one readiness at a time
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = udp.get_extra_info("sockname")[1]
        total = UDP_DRAIN + 10
        for n in range(total):
            sender.sendto(b"d%d" % n, ("127.0.0.1", port))
        await asyncio.sleep(0.05)           # all queued in the kernel
        udp._read()
        assert len(got) == UDP_DRAIN
        udp._read()
        assert len(got) == total
        udp._read()                         # nothing left: returns at BlockingIOError
        assert [d for d, _ in got] == [b"d%d" % n for n in range(total)]
        me = sender.getsockname()
        assert {s for _, s in got} == {("UDP", "127.0.0.1", me[1])}
    finally:
        sender.close()
        udp.close()


async def test_a_member_answers_each_datagram_of_a_burst(farm):
    # Through the shell as in service: a burst of REGISTERs read in one readiness, each
    # answered (401 challenges) over the same socket.
    loop = asyncio.get_running_loop()
    shell = SipWorkload(Settings())
    shell.farm, shell._runtime = farm, SimpleNamespace(node_id="sipfarm-1")
    shell.udp = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), shell.received)
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    answers: list = []
    loop.add_reader(phone.fileno(), lambda: answers.append(parse_message(phone.recv(65535))))
    try:
        port = shell.udp.get_extra_info("sockname")[1]
        me = phone.getsockname()[1]
        for n in range(20):
            phone.sendto(register(branch=f"z9hG4bKburst{n}", call_id=f"burst-{n}").replace(b"5062", str(me).encode()),
                         ("127.0.0.1", port))
        await _wait_for(lambda: len(answers) == 20)
        assert {a.status for a in answers} == {401}
        assert {a.call_id for a in answers} == {f"burst-{n}" for n in range(20)}
    finally:
        loop.remove_reader(phone.fileno())
        phone.close()
        shell.udp.close()


class _FullOnce:
    """A socket whose first sendto meets a full buffer (EAGAIN)."""

    def __init__(self, real: socket.socket) -> None:
        self.real, self.refused = real, 0

    def sendto(self, data, addr):
        if not self.refused:
            self.refused += 1
            raise BlockingIOError
        return self.real.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self.real, name)


async def test_sends_that_meet_a_full_buffer_are_queued_in_order_bounded_and_flushed(monkeypatch):
    loop = asyncio.get_running_loop()
    sock = await _bind_udp("127.0.0.1", 0)
    udp = _UdpSocket(loop, sock, lambda data, source: None)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        udp.sock = _FullOnce(sock)
        monkeypatch.setattr(workload, "MAX_WRITE_BUFFER", 11)
        to = peer.getsockname()
        udp.sendto(b"first", to)        # refused by the kernel: queued, waits for writable
        udp.sendto(b"second", to)       # behind it, in order (5 + 6 bytes fit the bound)
        udp.sendto(b"third", to)        # past the bound: lost, as on the wire
        assert [d for d, _ in udp._queue] == [b"first", b"second"]
        await _wait_for(lambda: not udp._queue)
        assert [peer.recv(100), peer.recv(100)] == [b"first", b"second"]
        udp.sendto(b"after", to)        # writable again: sent at once
        assert peer.recv(100) == b"after" and not udp._queue
    finally:
        peer.close()
        udp.close()


async def test_a_socket_closed_by_the_work_on_a_datagram_reads_no_further():
    loop = asyncio.get_running_loop()
    got: list = []
    udp = None

    def received(data, source) -> None:
        got.append(data)
        udp.close()                         # as stop() would, from inside the drain

    udp = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), received)
    loop.remove_reader(udp.sock.fileno())
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for n in range(3):
            sender.sendto(b"d%d" % n, udp.get_extra_info("sockname"))
        await asyncio.sleep(0.05)
        udp._read()
        assert got == [b"d0"] and udp.closed
        udp.sendto(b"late", sender.getsockname())     # after close: nothing, no error
    finally:
        sender.close()
