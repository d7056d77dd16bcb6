"""SIP over WebSocket (RFC 7118), sans-IO, on wsproto.

Theory of operation
-------------------
A browser phone opens an HTTP/1.1 connection and asks to upgrade it to a WebSocket with
``Sec-WebSocket-Protocol: sip`` (RFC 7118 §4.1).  ``SipWebSocket`` is the server side of one
such connection, in h11's shape: the shell hands it every byte received (``receive``), it
answers with the bytes to write back and the complete SIP messages that arrived, and
``send`` turns a SIP message into a frame.  wsproto does the handshake and the framing
(masking, fragments, control frames); this module adds SIP's rules:

* **The handshake** is accepted only when the client offers the ``sip`` subprotocol, and
  the answer names it; otherwise -- or for anything that is not a WebSocket upgrade at all
  -- the client gets a plain HTTP 400 with a one-line reason, and the connection closes.
* **One SIP message per WebSocket message** (§5): text or binary, possibly fragmented; the
  message is handed up when its last fragment arrives.  A message larger than
  ``max_message`` closes the connection with 1009 (message too big) as soon as that is
  known, so memory stays bounded whatever a client sends: wsproto streams a frame's payload
  as it arrives, and nothing else is kept.
* **Sending**: a message that is valid UTF-8 goes as a text frame (what browser stacks
  expect), anything else (a binary body) as a binary frame (§5.3 allows both).
* **CRLF keep-alives**: a message of nothing but CRLFs is no SIP message; a CRLFCRLF "ping"
  is answered with a CRLF "pong" message (RFC 5626 §4.4.1, as on the farm's other streams),
  any other run of CRLFs is ignored.  Browser stacks send them over the WebSocket (SIP.js's
  ``keepAliveInterval``: CRLFCRLF, and a CRLF message clears its keep-alive timeout); neither
  is handed up.
* **Ping** is answered with pong; a **close** is answered with the same code and the
  connection ends (``closed``).  A protocol error from the client closes with the code
  wsproto names (1002, 1007, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, Request,
                            TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

SUBPROTOCOL = "sip"
MESSAGE_TOO_BIG = 1009


@dataclass
class Received:
    """What one ``receive`` produced: bytes to write back, SIP messages that arrived."""

    to_send: bytes = b""
    messages: list[bytes] = field(default_factory=list)


class SipWebSocket:
    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._ws = WSConnection(ConnectionType.SERVER)
        self._partial = bytearray()
        self.open = False        # the handshake succeeded
        self.closed = False      # the shell should close the connection once ``to_send`` is written
        self.refused: int | None = None   # the HTTP status a refused handshake got

    def receive(self, data: bytes | None) -> Received:
        """Bytes from the client (None: it closed its side)."""
        out = Received()
        if self.closed:
            return out
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._on_event(event, out)
                if self.closed:
                    break
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            if not self.open:
                out.to_send += self._refuse(hint.status_code if isinstance(hint, RejectConnection) else 400,
                                            str(exc))
            elif isinstance(hint, CloseConnection):
                out.to_send += self._close(hint.code, hint.reason or "")
            else:
                self.closed = True
        if data is None:
            self.closed = True
        return out

    @property
    def pending(self) -> bool:
        """Part of a SIP message arrived, not its last fragment (the shell times it)."""
        return bool(self._partial)

    def send(self, message: bytes) -> bytes:
        """A SIP message as one WebSocket frame (empty if the connection is not open)."""
        if not self.open or self.closed:
            return b""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            return self._ws.send(BytesMessage(data=message))
        return self._ws.send(TextMessage(data=text))

    # --- internals ------------------------------------------------------------------------

    def _on_event(self, event, out: Received) -> None:
        if isinstance(event, Request):
            if SUBPROTOCOL not in [p.strip().lower() for p in event.subprotocols]:
                out.to_send += self._refuse(400, "Sec-WebSocket-Protocol: sip is required (RFC 7118)")
                return
            out.to_send += self._ws.send(AcceptConnection(subprotocol=SUBPROTOCOL,
                                                          extra_headers=[(b"server", b"Colony SIP farm")]))
            self.open = True
        elif isinstance(event, (TextMessage, BytesMessage)):
            chunk = event.data.encode("utf-8") if isinstance(event, TextMessage) else event.data
            if len(self._partial) + len(chunk) > self.max_message:
                self._partial.clear()
                out.to_send += self._close(MESSAGE_TOO_BIG, "SIP message too big")
                return
            self._partial += chunk
            if event.message_finished:
                message = bytes(self._partial)
                self._partial.clear()
                if message and not message.strip(b"\r\n"):      # a keep-alive, not a SIP message
                    if b"\r\n\r\n" in message:
                        out.to_send += self._ws.send(TextMessage(data="\r\n"))
                    return
                out.messages.append(message)
        elif isinstance(event, Ping):
            out.to_send += self._ws.send(event.response())
        elif isinstance(event, CloseConnection):
            try:
                out.to_send += self._ws.send(event.response())
            except LocalProtocolError:
                pass
            self.closed = True

    def _close(self, code: int, reason: str) -> bytes:
        self.closed = True
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        try:
            return self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return b""

    def _refuse(self, status: int, reason: str) -> bytes:
        """A plain HTTP answer to a handshake we do not take (wsproto's own state may already
        be broken by the bad request, so it is written here)."""
        self.closed = True
        self.refused = status
        body = (reason.replace("\r", " ").replace("\n", " ")[:200] + "\n").encode()
        phrase = {400: "Bad Request", 426: "Upgrade Required"}.get(status, "Bad Request")
        return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
