"""RFC 5626 outbound on a real farm member: a phone registering a flow (``+sip.instance``,
``reg-id``, ``Supported: outbound``) over TCP is told ``Require: outbound`` and its
``Flow-Timer``, and its CRLF keep-alive on that connection gets its pong (§4.4.1); over UDP
its keep-alive, a STUN Binding request to the SIP port, is answered with the address it came
from (§8).  A phone that does not ask sees neither header."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from colony.protocols.sip.stun import MAGIC_COOKIE
from test_sipfarm import Udp, bindings, serve_credentials
from test_transports import TlsPhone, hostport, register

pytestmark = pytest.mark.slow

INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


@pytest.fixture
async def member(cluster):
    await serve_credentials(await cluster.client())
    cluster.start("sipfarm", "sipfarm-1", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25", COLONY_SIP_FLOW_TIMER="90")
    return (await cluster.wait_state("sipfarm-1", "READY", timeout=60)).addresses


async def test_a_tcp_flow_asking_for_outbound_is_told_so_and_its_keep_alive_answered(member, cluster):
    reader, writer = await asyncio.open_connection(*hostport(member["sip"]))
    phone = TlsPhone(reader, writer)       # SIP over a stream; no TLS here
    try:
        ok = await register(phone, "TCP", "alice", f"127.0.0.1:{phone.port}", f"sip:alice@127.0.0.1:{phone.port};transport=tcp;ob",
                            contact_params=f";{INSTANCE};reg-id=1", supported="Supported: path, outbound\r\n")
        assert ok.headers.get_all("Require") == ["outbound"] and ok.headers.get_all("Flow-Timer") == ["90"]
        [binding] = await bindings(cluster, "alice")
        assert binding["transport"] == "TCP"
        # §4.4.1: the double-CRLF ping, answered by a single CRLF pong on the same connection.
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"\r\n"
        # linphone's way: +sip.instance and Supported: outbound, but no reg-id -- as before.
        ok = await register(phone, "TCP", "bob", f"127.0.0.1:{phone.port}", f"sip:bob@127.0.0.1:{phone.port};transport=tcp",
                            contact_params=f";{INSTANCE}", supported="Supported: replaces, outbound, gruu\r\n")
        assert ok.headers.get_all("Require") == [] and ok.headers.get_all("Flow-Timer") == []
    finally:
        writer.close()


async def test_a_stun_keep_alive_over_udp_is_answered_with_the_phone_s_address(member):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    try:
        transaction = os.urandom(12)
        transport.sendto(struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + transaction, hostport(member["sip"]))
        answer = await asyncio.wait_for(protocol.queue.get(), 10)
        kind, _, cookie = struct.unpack_from("!HHI", answer)
        assert (kind, cookie, answer[8:20]) == (0x0101, MAGIC_COOKIE, transaction)
        attribute, _, _, family, xport = struct.unpack_from("!HHBBH", answer, 20)
        xaddress = struct.unpack_from("!I", answer, 28)[0]
        assert (attribute, family) == (0x0020, 1)
        assert xport ^ (MAGIC_COOKIE >> 16) == transport.get_extra_info("sockname")[1]
        assert xaddress ^ MAGIC_COOKIE == 0x7F000001
    finally:
        transport.close()
