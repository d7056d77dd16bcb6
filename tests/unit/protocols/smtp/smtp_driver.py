"""A policy-less driver for the SMTP core: answers every Command with a fixed reply."""

from __future__ import annotations

from colony.protocols.smtp import NEED_DATA, PAUSED, ServerConfig, ServerConnection, events as E, replies as R

DEFAULT_ANSWERS = {E.Helo: R.OK, E.MailFrom: R.SENDER_OK, E.RcptTo: R.RECIPIENT_OK, E.DataComplete: R.QUEUED}


class Driver:
    def __init__(self, now: float = 0.0, answers=None, greet: bool = True, **config) -> None:
        config.setdefault("hostname", "mx.test")
        self.conn = ServerConnection(ServerConfig(**config), now)
        self.answers = {**DEFAULT_ANSWERS, **(answers or {})}
        self.events: list[E.Event] = []
        self.out = bytearray()
        self.messages: list[bytes] = []
        self._body = bytearray()
        if greet:
            self.out += self.conn.greet(now)

    def feed(self, data: bytes, now: float = 1.0) -> bytes:
        """Send ``data``, answer what the core asks, return what the server wrote meanwhile."""
        start = len(self.out)
        self.conn.receive_data(data, now)
        self.pump()
        return bytes(self.out[start:])

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            self.out += self.conn.data_to_send()
            if event is NEED_DATA or event is PAUSED:
                return
            self.events.append(event)
            if isinstance(event, E.DataStarted):
                self._body.clear()
            elif isinstance(event, E.DataChunk):
                self._body += event.data
            elif isinstance(event, E.DataComplete):
                self.messages.append(bytes(self._body))
            if event.needs_reply:
                self.out += self.conn.send(self.answers[type(event)])

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def session(self) -> None:
        self.feed(b"EHLO client.test\r\n")
        self.feed(b"MAIL FROM:<a@remote.test>\r\n")
        self.feed(b"RCPT TO:<b@example.com>\r\n")


def codes(data: bytes) -> list[str]:
    """The final line of each reply: ``["250 2.0.0", ...]`` (code and enhanced status)."""
    out = []
    for line in data.decode().split("\r\n"):
        if len(line) >= 4 and line[3] == " ":
            out.append(" ".join(line.split(" ")[:2]) if line[4:5].isdigit() else line[:3])
    return out
