"""The member's UDP socket (workload._UdpSocket): drained up to UDP_DRAIN datagrams per
readiness, every datagram handed to the shell with its source; sends that meet a full kernel
buffer are queued (bounded) and flushed when the socket is writable."""

from __future__ import annotations

import asyncio
import logging
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


async def test_a_datagram_to_a_host_name_is_sent_after_a_lookup_off_the_loop_and_the_name_remembered(monkeypatch):
    # sendto given a name resolves it itself, blocking the loop for as long as DNS takes.
    loop = asyncio.get_running_loop()
    looked_up: list[str] = []

    async def getaddrinfo(host, port, family=0, type=0):
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("127.0.0.1", port))]
    udp = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), lambda data, source: None)
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    sent = []
    real = udp.sock

    class Watched:       # what reaches the kernel: never a name
        family = real.family

        def sendto(self, data, addr):
            sent.append(addr[0])
            return real.sendto(data, addr)
    udp.sock = Watched()
    try:
        port = phone.getsockname()[1]
        udp.sendto(b"one", ("phone.test", port))
        udp.sendto(b"two", ("phone.test", port))      # before the first lookup ended: looked up too
        await _wait_for(lambda: len(sent) == 2)
        udp.sendto(b"three", ("phone.test", port))    # remembered: sent at once
        assert sent == ["127.0.0.1"] * 3 and looked_up == ["phone.test", "phone.test"]
        got = set()
        await _wait_for(lambda: (got.update(_drain(phone)) or len(got) == 3))
        assert got == {b"one", b"two", b"three"}
    finally:
        udp.sock = real
        udp.close()
        phone.close()


def _drain(sock) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(100))
        except BlockingIOError:
            return out


async def test_a_name_that_hangs_or_fails_loses_its_datagram_and_blocks_nothing(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="colony.sipfarm")
    loop = asyncio.get_running_loop()
    hang = asyncio.Event()

    async def getaddrinfo(host, port, family=0, type=0):
        if host == "nowhere.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        await hang.wait()         # a DNS server that never answers
        return []
    udp = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), lambda data, source: None)
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(workload, "MAX_LOOKUPS", 3)
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    try:
        port = phone.getsockname()[1]
        for n in range(5):                 # three lookups hang; the other two are lost at once
            udp.sendto(b"x%d" % n, ("slow.test", port))
        assert len(udp._lookups) == 3
        udp.sendto(b"now", ("127.0.0.1", port))      # an address goes out meanwhile
        udp.sendto(b"lost", ("nowhere.test", port))  # over the limit too: lost at once
        await _wait_for(lambda: _drain(phone) == [b"now"])
        hang.set()
        await _wait_for(lambda: not udp._lookups)
        monkeypatch.setattr(workload, "MAX_LOOKUPS", 64)
        udp.sendto(b"lost", ("nowhere.test", port))
        await _wait_for(lambda: not udp._lookups)
        await asyncio.sleep(0.02)
        assert _drain(phone) == [] and "does not resolve" in caplog.text
    finally:
        udp.close()
        phone.close()


async def test_a_destination_no_datagram_can_have_is_logged_not_raised(caplog):
    """A port past 65535 (sendto raises OverflowError) or a host name no DNS can hold (a label
    over 63 octets: getaddrinfo raises UnicodeError), both from a phone's packet, lose their
    datagram with a log line -- they were a traceback per packet ("Task exception was never
    retrieved")."""
    caplog.set_level(logging.INFO, logger="colony.sipfarm")
    loop = asyncio.get_running_loop()
    udp = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), lambda data, source: None)
    try:
        udp.sendto(b"x", ("127.0.0.1", 99_999_999))
        udp._queue.append((b"y", ("127.0.0.1", 99_999_999)))     # met a full buffer before
        udp._queued += 1
        udp._flush()
        assert not udp._queue
        udp.sendto(b"z", ("a" * 300 + ".example", 5060))
        await _wait_for(lambda: not udp._lookups)
        task_errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not task_errors and caplog.text.count("could not send") == 2 and "does not resolve" in caplog.text
    finally:
        udp.close()


async def test_a_name_that_resolves_into_a_denied_network_loses_its_datagram_at_every_lookup(monkeypatch, caplog):
    # A phone's Contact or a Route may name a host whose address the farm must not send to
    # (sip_contact_deny_networks); the farm judges literals, the socket what a name resolves to.
    from colony.settings import SIP_CONTACT_DENY_DEFAULT
    from colony_sipfarm.farm import NetworkVerdicts

    caplog.set_level(logging.INFO, logger="colony.sipfarm")
    loop = asyncio.get_running_loop()
    answers = {"inner.test": "127.0.0.1", "phone.test": "192.0.2.50"}

    async def getaddrinfo(host, port, family=0, type=0):
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", (answers[host], port))]
    denied = NetworkVerdicts(SIP_CONTACT_DENY_DEFAULT)
    udp = _UdpSocket(loop, await _bind_udp("127.0.0.1", 0), lambda data, source: None, lambda a: a in denied)
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    sent = []

    class Watched:
        family = udp.sock.family

        def sendto(self, data, addr):
            sent.append(addr[0])
    real, udp.sock = udp.sock, Watched()
    try:
        udp.sendto(b"x", ("inner.test", 5432))
        await _wait_for(lambda: "in sip_contact_deny_networks" in caplog.text)
        assert sent == [] and "inner.test" not in udp._names       # not remembered: asked again each time
        udp.sendto(b"y", ("phone.test", 5060))
        await _wait_for(lambda: sent == ["192.0.2.50"])
    finally:
        udp.sock = real
        udp.close()
