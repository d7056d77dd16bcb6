"""SIP over TLS (RFC 3261 §26) and over WebSocket (RFC 7118) on real farm members: phones
that register over an encrypted or WebSocket flow at one member are called through another,
and what reaches them goes over their own connection.  The TLS and WebSocket phones are
Python clients speaking SIP text (Debian's sipp is built without TLS); the caller of the
WebSocket phone is sipp over UDP."""

from __future__ import annotations

import asyncio
import ssl
import uuid

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, RejectConnection, Request, TextMessage

from colony.protocols.sip.parser import StreamFramer, parse_message
from colony.tlsfiles import TlsFiles, ensure_local_ca
from test_sipfarm import (DOMAIN, PASSWORDS, SCENARIOS, Udp, bindings, digest_answer, free_udp_port,
                          needs_sipp, serve_credentials, sipp)

pytestmark = pytest.mark.slow


async def start_tls_members(cluster, tmp_path, **env: str) -> tuple[list[dict], TlsFiles]:
    """Two members with a certificate of a local CA for 127.0.0.1 (and ``env`` besides), READY;
    their listeners as `colony status` shows them, and the CA's files."""
    await serve_credentials(await cluster.client())
    tls = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    for n in (1, 2):
        cluster.start("sipfarm", f"sipfarm-{n}", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25",
                      COLONY_TLS_CERT_FILE=str(tls.cert), COLONY_TLS_KEY_FILE=str(tls.key), **env)
    views = [await cluster.wait_state(f"sipfarm-{n}", "READY", timeout=60) for n in (1, 2)]
    return [v.addresses for v in views], tls


@pytest.fixture
async def members(cluster, tmp_path):
    """Two members with the cluster's TLS certificate; their listeners as `colony status` shows them."""
    addresses, tls = await start_tls_members(cluster, tmp_path)
    yield addresses, ssl.create_default_context(cafile=str(tls.ca))


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition("//")[2].rpartition(":")
    return host, int(port)


class TlsPhone:
    def __init__(self, reader, writer) -> None:
        self.reader, self.writer, self.framer = reader, writer, StreamFramer()
        self.port = writer.get_extra_info("sockname")[1]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self, timeout: float = 10.0):
        while (data := self.framer.next_message()) is None:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            assert chunk, "connection closed"
            self.framer.feed(chunk)
        return parse_message(data)


class WsPhone:
    """A browser phone: RFC 7118 over a real socket, framed by wsproto."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list = []

    @classmethod
    async def connect(cls, address: str, context=None, subprotocols=("sip",)) -> tuple[WsPhone, object]:
        host, port = hostport(address)
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        phone = cls(reader, writer)
        writer.write(phone.ws.send(Request(host=host, target="/", subprotocols=list(subprotocols))))
        return phone, await phone.next_event()

    async def next_event(self, timeout: float = 10.0):
        while not self.events:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            self.ws.receive_data(chunk or None)
            self.events += list(self.ws.events())
            if not chunk and not self.events:
                raise AssertionError("connection closed")
        return self.events.pop(0)

    def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send(TextMessage(data=data.decode())))

    async def receive(self, timeout: float = 10.0):
        event = await self.next_event(timeout)
        assert isinstance(event, TextMessage), event
        return parse_message(event.data.encode())


async def register(phone, transport: str, user: str, sent_by: str, contact: str, *, contact_params: str = "",
                   supported: str = ""):
    """``user`` registers ``contact`` (its header ``<contact>contact_params``) from ``phone``:
    the challenge, then the answer to it, under one Call-ID; ``supported`` is header lines."""
    call_id = f"reg-{uuid.uuid4().hex}"

    def message(cseq: int, auth: str = "") -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{transport} {sent_by};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:{user}@{DOMAIN}>;tag=r1\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} REGISTER\r\nContact: <{contact}>{contact_params}\r\n{supported}Expires: 300\r\n"
                f"{auth}Content-Length: 0\r\n\r\n").encode()
    phone.send(message(1))
    challenge = await phone.receive()
    assert challenge.status == 401
    phone.send(message(2, digest_answer(challenge, user, "REGISTER", f"sip:{DOMAIN}", "Authorization")))
    ok = await phone.receive()
    assert ok.status == 200, ok
    return ok


def answer(request, status: int, reason: str, contact: str | None = None) -> bytes:
    headers = [f"Via: {v}" for v in request.headers.get_all("Via")]
    headers += [f"Record-Route: {r}" for r in request.headers.get_all("Record-Route")]
    to = request.headers.get("To") + ("" if "tag=" in request.headers.get("To") else ";tag=callee")
    headers += [f"From: {request.headers.get('From')}", f"To: {to}", f"Call-ID: {request.call_id}",
                f"CSeq: {request.headers.get('CSeq')}"]
    if contact:
        headers.append(f"Contact: <{contact}>")
    return (f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(headers) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_phone_on_tls_at_one_member_is_called_and_hung_up_on_through_another(members, cluster):
    addresses, context = members
    assert addresses[0]["sip_tls"] != addresses[1]["sip_tls"]
    reader, writer = await asyncio.open_connection(*hostport(addresses[1]["sip_tls"]), ssl=context,
                                                   server_hostname="127.0.0.1")
    bob = TlsPhone(reader, writer)
    bob_contact = f"sip:bob@127.0.0.1:{bob.port};transport=tls"
    await register(bob, "TLS", "bob", f"127.0.0.1:{bob.port}", bob_contact)
    [binding] = await bindings(cluster, "bob")
    assert binding["member"] == "sipfarm-2" and binding["transport"] == "TLS"

    loop = asyncio.get_running_loop()
    alice, alice_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    alice_port = alice.get_extra_info("sockname")[1]
    member1 = hostport(addresses[0]["sip"])

    def invite(cseq: int, auth: str = "") -> bytes:
        return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{alice_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: tls-call\r\nCSeq: {cseq} INVITE\r\n"
                f"Contact: <sip:alice@127.0.0.1:{alice_port}>\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n").encode()
    try:
        alice.sendto(invite(1), member1)
        challenge = parse_message(await asyncio.wait_for(alice_in.queue.get(), 10))
        assert challenge.status == 407
        alice.sendto(invite(2, digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")),
                     member1)
        assert parse_message(await asyncio.wait_for(alice_in.queue.get(), 10)).status == 100
        got = await bob.receive()      # relayed to member 2, written on bob's TLS connection
        assert got.method == "INVITE" and got.top_via().transport == "TLS"
        bob.send(answer(got, 200, "OK", contact=bob_contact))
        ok = parse_message(await asyncio.wait_for(alice_in.queue.get(), 10))
        assert ok.status == 200
        # alice hangs up through member 1 by the Record-Route; the BYE finds bob's TLS flow.
        route = ok.headers.get_all("Record-Route")[0]
        alice.sendto((f"BYE {bob_contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{alice_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                      f"Route: {route}\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: {ok.headers.get('To')}\r\n"
                      f"Call-ID: tls-call\r\nCSeq: 3 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), member1)
        bye = await bob.receive()
        assert bye.method == "BYE" and bye.call_id == "tls-call"
        bob.send(answer(bye, 200, "OK"))
        assert parse_message(await asyncio.wait_for(alice_in.queue.get(), 10)).status == 200
    finally:
        alice.close()
        writer.close()


@needs_sipp
async def test_a_browser_phone_on_websocket_gets_a_call_from_sipp_over_udp(members, cluster):
    addresses, context = members
    bob, accepted = await WsPhone.connect(addresses[1]["sip_wss"], context)
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
    contact = "sip:k3mx8w@df7jal23ls0d.invalid;transport=ws"
    ok = await register(bob, "WSS", "bob", "df7jal23ls0d.invalid", contact)
    via = ok.top_via()       # RFC 7118 §5.2: the .invalid sent-by gets the real source
    assert via.transport == "WSS" and via.host == "df7jal23ls0d.invalid" and via.params["received"] == "127.0.0.1"
    [binding] = await bindings(cluster, "bob")
    assert binding["transport"] == "WSS" and binding["member"] == "sipfarm-2"

    host, port = hostport(addresses[0]["sip"])        # sipp calls through member 1
    caller = asyncio.ensure_future(sipp(
        f"{host}:{port}", "-sf", str(SCENARIOS / "call.xml"), "-s", "bob", "-au", "alice", "-ap", PASSWORDS["alice"],
        "-key", "domain", DOMAIN, "-key", "caller", "alice", "-i", "127.0.0.1", "-p", str(free_udp_port()),
        "-d", "200"))
    try:
        invite = await bob.receive(timeout=30)
        assert invite.method == "INVITE" and invite.top_via().transport == "WSS"
        bob.send(answer(invite, 180, "Ringing"))
        bob.send(answer(invite, 200, "OK", contact=contact))
        ack = await bob.receive()
        assert ack.method == "ACK" and str(ack.uri) == contact          # the .invalid Contact reached by its flow
        bye = await bob.receive(timeout=30)
        assert bye.method == "BYE"
        bob.send(answer(bye, 200, "OK"))
        code, out = await asyncio.wait_for(caller, 60)
        assert code == 0, out
        # Ping gets pong; a close is answered and ends the flow.
        bob.writer.write(bob.ws.send(Ping(payload=b"keep")))
        assert isinstance(await bob.next_event(), Pong)
        bob.writer.write(bob.ws.send(CloseConnection(code=1000)))
        assert isinstance(await bob.next_event(), CloseConnection)
    finally:
        if not caller.done():
            caller.cancel()
        bob.writer.close()


async def test_a_websocket_upgrade_without_the_sip_subprotocol_gets_http_400(members):
    addresses, _ = members
    phone, answer_event = await WsPhone.connect(addresses[0]["sip_ws"], subprotocols=("chat",))
    assert isinstance(answer_event, RejectConnection) and answer_event.status_code == 400
    phone.writer.close()
    host, port = hostport(addresses[0]["sip_ws"])
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: farm\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(65536), 10)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert await asyncio.wait_for(reader.read(65536), 10) == b""       # and the connection is closed
    writer.close()


async def test_a_websocket_message_over_the_size_limit_closes_with_1009(members):
    addresses, _ = members
    phone, accepted = await WsPhone.connect(addresses[0]["sip_ws"])
    assert isinstance(accepted, AcceptConnection)
    phone.send(b"OPTIONS sip:farm SIP/2.0\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n")
    close = await phone.next_event()
    assert isinstance(close, CloseConnection) and close.code == 1009
    phone.writer.close()


async def test_a_call_to_a_websocket_phone_whose_connection_is_gone_fails_at_once_with_480(members, cluster):
    """The browser phone closed its flow but its registration lives on: the INVITE cannot reach
    it (no connection can be opened to a browser), so the branch fails with 430 Flow Failed
    (RFC 5626 §5.3) and the caller hears it now, not Timer C's 408 minutes later -- as 480
    Temporarily Unavailable (§11.5: a 430 is said between proxies, never to an endpoint)."""
    addresses, _ = members
    bob, accepted = await WsPhone.connect(addresses[1]["sip_ws"])
    assert isinstance(accepted, AcceptConnection)
    contact = "sip:q8v2@gone7.invalid;transport=ws"
    await register(bob, "WS", "bob", "gone7.invalid", contact)
    bob.writer.write(bob.ws.send(CloseConnection(code=1000)))
    assert isinstance(await bob.next_event(), CloseConnection)
    bob.writer.close()

    loop = asyncio.get_running_loop()
    caller, caller_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    caller_port = caller.get_extra_info("sockname")[1]
    call_id = f"gone-{uuid.uuid4().hex}"

    def invite(cseq: int, auth: str = "") -> bytes:
        return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{caller_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
                f"Contact: <sip:alice@127.0.0.1:{caller_port}>\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n").encode()
    try:
        member = hostport(addresses[0]["sip"])
        caller.sendto(invite(1), member)
        challenge = parse_message(await asyncio.wait_for(caller_in.queue.get(), 10))
        assert challenge.status == 407
        caller.sendto(invite(2, digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")),
                      member)
        statuses = []
        while not statuses or statuses[-1] < 200:
            statuses.append(parse_message(await asyncio.wait_for(caller_in.queue.get(), 15)).status)
        assert statuses[-1] == 480, statuses
    finally:
        caller.close()
