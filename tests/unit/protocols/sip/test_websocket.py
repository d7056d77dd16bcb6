"""SIP over WebSocket (RFC 7118) framing, driven by a wsproto client: no sockets."""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, RejectConnection, Request,
                            TextMessage)

from colony.protocols.sip.websocket import SipWebSocket

REGISTER = (b"REGISTER sip:acme.example SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKx\r\n"
            b"From: <sip:alice@acme.example>;tag=1\r\nTo: <sip:alice@acme.example>\r\nCall-ID: c\r\n"
            b"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")


def handshake(subprotocols=("sip",), max_message=4096):
    server, client = SipWebSocket(max_message), WSConnection(ConnectionType.CLIENT)
    got = server.receive(client.send(Request(host="farm.example", target="/", subprotocols=list(subprotocols))))
    client.receive_data(got.to_send)
    return server, client, list(client.events())


def test_the_sip_subprotocol_is_accepted_and_named():
    server, _, events = handshake()
    assert server.open and isinstance(events[0], AcceptConnection) and events[0].subprotocol == "sip"


def test_without_the_sip_subprotocol_the_client_gets_http_400():
    server, client, events = handshake(subprotocols=("chat",))
    assert not server.open and server.closed and server.refused == 400
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 400


def test_a_plain_http_request_gets_400_not_a_traceback():
    server = SipWebSocket(4096)
    got = server.receive(b"GET / HTTP/1.1\r\nHost: farm.example\r\n\r\n")
    assert got.to_send.startswith(b"HTTP/1.1 400 ") and server.closed and got.messages == []
    garbage = SipWebSocket(4096).receive(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n")
    assert garbage.to_send.startswith(b"HTTP/1.1 400 ")


def test_one_sip_message_per_websocket_message_text_or_binary_fragmented_or_not():
    server, client, _ = handshake()
    got = server.receive(client.send(TextMessage(data=REGISTER.decode())))
    assert got.messages == [REGISTER]
    first = client.send(BytesMessage(data=REGISTER[:40], message_finished=False))
    rest = client.send(BytesMessage(data=REGISTER[40:], message_finished=True))
    assert server.receive(first).messages == []
    assert server.receive(rest).messages == [REGISTER]
    two = client.send(TextMessage(data="a")) + client.send(TextMessage(data="b"))
    assert server.receive(two).messages == [b"a", b"b"]


def test_sending_uses_text_frames_for_utf8_and_binary_otherwise():
    server, client, _ = handshake()
    client.receive_data(server.send(REGISTER) + server.send(b"SIP/2.0 200 OK\r\n\r\n\xff\xfe"))
    events = list(client.events())
    assert isinstance(events[0], TextMessage) and events[0].data.encode() == REGISTER
    assert isinstance(events[1], BytesMessage) and events[1].data.endswith(b"\xff\xfe")


def test_a_message_over_the_limit_closes_with_1009_before_it_is_all_read():
    server, client, _ = handshake(max_message=1024)
    got = server.receive(client.send(BytesMessage(data=b"x" * 800, message_finished=False)))
    assert got.to_send == b"" and not server.closed
    got = server.receive(client.send(BytesMessage(data=b"x" * 800, message_finished=False)))
    client.receive_data(got.to_send)
    [close] = list(client.events())
    assert isinstance(close, CloseConnection) and close.code == 1009 and server.closed
    assert server.receive(b"\x82\x81abcdX").messages == []     # nothing more is read


def test_ping_gets_pong_and_close_is_answered():
    server, client, _ = handshake()
    client.receive_data(server.receive(client.send(Ping(payload=b"hi"))).to_send)
    [pong] = list(client.events())
    assert isinstance(pong, Pong) and pong.payload == b"hi"
    got = server.receive(client.send(CloseConnection(code=1000)))
    client.receive_data(got.to_send)
    [close] = list(client.events())
    assert isinstance(close, CloseConnection) and close.code == 1000 and server.closed


def test_a_crlfcrlf_keepalive_gets_a_crlf_pong_and_is_no_sip_message():
    """SIP.js's keepAliveInterval sends CRLFCRLF as a WebSocket message and takes a CRLF
    message as the pong (RFC 5626 §4.4.1); it reached the farm as an unparsable message and
    got nothing back."""
    server, client, _ = handshake()
    got = server.receive(client.send(TextMessage(data="\r\n\r\n")))
    assert got.messages == []
    client.receive_data(got.to_send)
    [pong] = list(client.events())
    assert isinstance(pong, TextMessage) and pong.data == "\r\n"
    got = server.receive(client.send(TextMessage(data="\r\n")))          # a lone CRLF: no ping
    assert got.messages == [] and got.to_send == b""
    got = server.receive(client.send(BytesMessage(data=b"\r\n\r\n")) + client.send(TextMessage(data=REGISTER.decode())))
    assert got.messages == [REGISTER] and got.to_send != b"" and not server.closed


def test_a_client_frame_without_a_mask_is_a_protocol_error_closing_with_1002():
    server, client, _ = handshake()
    unmasked = b"\x81\x02hi"       # FIN + text, no mask bit: clients must mask (RFC 6455 5.1)
    got = server.receive(unmasked)
    client.receive_data(got.to_send)
    [close] = list(client.events())
    assert isinstance(close, CloseConnection) and close.code == 1002 and server.closed
