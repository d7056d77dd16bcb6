"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state), sans-IO.

Theory of operation
-------------------
A transaction is a request and every response to it.  Four state machines: client and
server, INVITE and non-INVITE (RFC 3261 figures 5-8, as corrected by RFC 6026).  Each is an
object that is *told* what happened -- ``on_response``/``on_request`` (a message from the
network), ``respond`` (the transaction user's answer), ``handle_timer(now)`` -- and answers
with a list of actions for the shell:

* ``Transmit(message, destination)`` -- put these bytes on the wire;
* ``Deliver(message)`` -- hand a response (client) up to the transaction user;
* ``TimedOut()`` -- Timer B/F/H fired: no answer (client) or no ACK (server);
* ``Terminated()`` -- forget this transaction.

Time is an argument everywhere and ``next_timer()`` says when to call ``handle_timer`` next,
so the asyncio shell sleeps until that deadline and tests move a fake clock (aioquic's
shape).  ``reliable`` (TCP/TLS/WS) turns retransmission timers off and the wait-for-strays
timers (D, I, J, K) to zero, as §17 requires.

Timers (defaults T1 = 0.5 s, T2 = 4 s, T4 = 5 s):

    A  INVITE client retransmit        T1, doubling          (unreliable only)
    B  INVITE client timeout           64*T1                 (while Calling only)
    D  INVITE client wait for strays   32 s / 0
    E  non-INVITE client retransmit    T1, doubling to T2    (unreliable only)
    F  non-INVITE client timeout       64*T1
    G  INVITE server final retransmit  T1, doubling to T2    (unreliable only)
    H  INVITE server wait for ACK      64*T1
    I  INVITE server wait for ACKs     T4 / 0
    J  non-INVITE server strays        64*T1 / 0
    K  non-INVITE client strays        T4 / 0
    L  INVITE server Accepted          64*T1   (RFC 6026)
    M  INVITE client Accepted          64*T1   (RFC 6026)

Matching (§17.1.3, §17.2.3): a response belongs to the client transaction with its top Via
branch and CSeq method; a request belongs to the server transaction with its top Via branch,
sent-by and method, where an ACK for a non-2xx final matches its INVITE.  Branches without
the ``z9hG4bK`` magic cookie (RFC 2543 peers) are matched on Request-URI, tags, Call-ID,
CSeq and top Via instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from colony.protocols.sip.message import Headers, SipRequest, SipResponse, Via, remember_via

MAGIC = "z9hG4bK"


@dataclass(frozen=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


Destination = tuple[str, str, int]   # (transport, host, port)


@dataclass(frozen=True)
class Transmit:
    message: SipRequest | SipResponse
    destination: Destination | None = None   # None: where the request came from (server side)


@dataclass(frozen=True)
class Deliver:
    message: SipResponse


@dataclass(frozen=True)
class TimedOut:
    pass


@dataclass(frozen=True)
class Terminated:
    pass


Action = Transmit | Deliver | TimedOut | Terminated


class State(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


def stamp_via(request: SipRequest, source: Destination) -> None:
    """What a server does to the top Via on receipt (RFC 3261 §18.2.1, RFC 3581 §4): add
    ``received`` when the packet came from another address than the Via names, and fill an
    empty ``rport`` with the source port (then ``received`` always) -- so responses find a
    client behind NAT."""
    value = request.headers.get("Via")
    if value is None:
        return
    via = request.top_via()
    params = dict(via.params)
    _, host, port = source
    if "rport" in params and not params["rport"]:
        params["rport"] = str(port)
        params["received"] = host
    elif host != via.host:
        params["received"] = host
    if params != via.params:
        stamped = Via(via.transport, via.host, via.port, params, via.version)
        text = str(stamped)
        remember_via(text, stamped)
        request.headers.replace_first("Via", text)


def response_destination(via: Via, source: Destination | None) -> Destination:
    """Where a response goes (RFC 3261 §18.2.2, RFC 3581 §4): over a reliable transport back
    on the connection it came in on (``source``, the shell maps it to the connection);
    otherwise to ``received`` (else the sent-by host), at ``rport`` (else the sent-by port,
    else 5060).

    A Via ``maddr`` is ignored, as Kamailio does by default (``reply_to_via=0``), though
    §18.2.2 would send there: it let anyone aim the farm's answers -- a 401/407 or an OPTIONS
    200 is ~2.2x the request that asks for it -- at a third party without spoofing an
    address.  Answers go where the request came from (``received``/``rport``), or where its
    sent-by says; a client that multicasts its requests has no use for SIP service here."""
    transport = via.transport.upper()
    # A request that came on a connection is answered on it, whatever transport its Via names:
    # a Via of UDP with a maddr had a TCP client's answers sent as datagrams to any address.
    if source is not None and (transport != "UDP" or source[0] != "UDP"):
        return source
    host = via.params.get("received") or via.host
    if host.startswith("[") and host.endswith("]"):
        # RFC 3261's grammar has received=IPv6address, bare; RFC 5118 §4.5 has receivers take
        # the bracketed form some senders write too.  Kept, the brackets made it a host name
        # to look up, and the answer was lost.
        host = host[1:-1]
    rport = via.params.get("rport")
    # An rport no port can be (a client's own, RFC 3581 leaves its form to us) is ignored: the
    # shell's sendto raised on it, a traceback per packet.
    port = int(rport) if rport and rport.isdigit() and 0 < int(rport) < 65536 else (via.port or 5060)
    return (transport, host, port)


def build_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client transaction sends for a non-2xx final response (§17.1.1.3): same
    Request-URI, top Via, From, Call-ID, CSeq number and Route set; To from the response."""
    headers = Headers()
    via = invite.headers.get("Via")
    if via:
        headers.add("Via", via)
    for name in ("From", "Call-ID"):
        headers.add(name, invite.headers.get(name) or "")
    headers.add("To", response.headers.get("To") or invite.headers.get("To") or "")
    headers.add("CSeq", f"{invite.cseq().number} ACK")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    return SipRequest(headers=headers, method="ACK", uri=invite.uri)


class Transaction:
    invite: bool = False

    def __init__(self, request: SipRequest, reliable: bool, timers: Timers) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = State.TRYING
        self._deadlines: dict[str, float] = {}
        self._interval = timers.t1

    @property
    def branch(self) -> str:
        return self.request.top_via().branch or ""

    def next_timer(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def _set(self, name: str, at: float) -> None:
        self._deadlines[name] = at

    def _clear(self, *names: str) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def _terminate(self) -> list[Action]:
        self.state = State.TERMINATED
        self._deadlines.clear()
        return [Terminated()]

    def _due(self, now: float) -> list[str]:
        return sorted((n for n, at in self._deadlines.items() if at <= now), key=lambda n: self._deadlines[n])

    @property
    def terminated(self) -> bool:
        return self.state == State.TERMINATED


# --- client transactions -------------------------------------------------------------------

class ClientTransaction(Transaction):
    def __init__(self, request: SipRequest, destination: Destination, reliable: bool,
                 timers: Timers = Timers()) -> None:
        super().__init__(request, reliable, timers)
        self.destination = destination
        self.invite = request.method == "INVITE"
        self.final: SipResponse | None = None

    def start(self, now: float) -> list[Action]:
        self.state = State.CALLING if self.invite else State.TRYING
        if not self.reliable:
            self._set("A" if self.invite else "E", now + self.timers.t1)
        self._set("B" if self.invite else "F", now + 64 * self.timers.t1)
        return [Transmit(self.request, self.destination)]

    def on_response(self, response: SipResponse, now: float) -> list[Action]:
        status = response.status
        if self.invite:
            return self._invite_response(response, status, now)
        if self.state in (State.TRYING, State.PROCEEDING):
            if status < 200:
                self.state = State.PROCEEDING
                return [Deliver(response)]
            self.final = response
            self.state = State.COMPLETED
            self._clear("E", "F")
            if self.reliable:
                return [Deliver(response), *self._terminate()]
            self._set("K", now + self.timers.t4)
            return [Deliver(response)]
        return []  # a retransmitted final in COMPLETED is absorbed

    def _invite_response(self, response: SipResponse, status: int, now: float) -> list[Action]:
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                # Timer B times out a transaction still *Calling* only (§17.1.1.2, figure 5):
                # a ringing phone may ring for minutes; a proxy's Timer C bounds that.
                self.state = State.PROCEEDING
                self._clear("A", "B")
                return [Deliver(response)]
            self._clear("A", "B")
            if status < 300:
                # RFC 6026: stay to pass every 2xx (forked answers) up; the TU ACKs them.
                self.state = State.ACCEPTED
                self._set("M", now + 64 * self.timers.t1)
                return [Deliver(response)]
            self.final = response
            self.state = State.COMPLETED
            ack = Transmit(build_ack(self.request, response), self.destination)
            if self.reliable:
                return [ack, Deliver(response), *self._terminate()]
            self._set("D", now + 32.0)
            return [ack, Deliver(response)]
        if self.state == State.ACCEPTED and 200 <= status < 300:
            return [Deliver(response)]
        if self.state == State.COMPLETED and status >= 300:
            return [Transmit(build_ack(self.request, response), self.destination)]  # our ACK was lost
        return []

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for name in self._due(now):
            if self.terminated:
                break
            if name in ("A", "E"):
                self._interval = self._interval * 2 if name == "A" else min(self._interval * 2, self.timers.t2)
                if name == "E" and self.state == State.PROCEEDING:
                    self._interval = self.timers.t2
                self._set(name, now + self._interval)
                actions.append(Transmit(self.request, self.destination))
            elif name in ("B", "F"):
                actions += [TimedOut(), *self._terminate()]
            elif name in ("D", "K", "M"):
                actions += self._terminate()
        return actions


# --- server transactions -------------------------------------------------------------------

class ServerTransaction(Transaction):
    def __init__(self, request: SipRequest, reliable: bool, timers: Timers = Timers(),
                 source: Destination | None = None) -> None:
        super().__init__(request, reliable, timers)
        self.invite = request.method == "INVITE"
        self.source = source
        self.last_response: SipResponse | None = None
        self.state = State.PROCEEDING if self.invite else State.TRYING

    def _send(self, response: SipResponse) -> Transmit:
        return Transmit(response, response_destination(response.top_via(), self.source))

    def on_request(self, request: SipRequest, now: float) -> list[Action]:
        """A retransmission of our request, or (INVITE) the ACK for a non-2xx final."""
        if request.method == "ACK":
            if self.invite and self.state == State.COMPLETED:
                self.state = State.CONFIRMED
                self._clear("G", "H")
                if self.reliable:
                    return self._terminate()
                self._set("I", now + self.timers.t4)
            return []
        if self.last_response is not None and self.state in (State.PROCEEDING, State.COMPLETED):
            return [self._send(self.last_response)]
        return []

    def respond(self, response: SipResponse, now: float) -> list[Action]:
        """The transaction user's answer."""
        if self.state in (State.TERMINATED, State.CONFIRMED):
            return []
        status = response.status
        if status < 200:
            if self.state in (State.TRYING, State.PROCEEDING):
                self.state = State.PROCEEDING
                self.last_response = response
                return [self._send(response)]
            return []
        if self.state == State.ACCEPTED:
            return [self._send(response)] if 200 <= status < 300 and self.invite else []
        if self.state == State.COMPLETED:
            return []
        self.last_response = response
        out = [self._send(response)]
        if self.invite:
            if status < 300:
                self.state = State.ACCEPTED
                self._set("L", now + 64 * self.timers.t1)
                return out
            self.state = State.COMPLETED
            if not self.reliable:
                self._set("G", now + self.timers.t1)
            self._set("H", now + 64 * self.timers.t1)
            return out
        self.state = State.COMPLETED
        if self.reliable:
            return out + self._terminate()
        self._set("J", now + 64 * self.timers.t1)
        return out

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for name in self._due(now):
            if self.terminated:
                break
            if name == "G":
                self._interval = min(self._interval * 2, self.timers.t2)
                self._set("G", now + self._interval)
                if self.last_response is not None:
                    actions.append(self._send(self.last_response))
            elif name == "H":
                actions += [TimedOut(), *self._terminate()]
            elif name in ("I", "J", "L"):
                actions += self._terminate()
        return actions


# --- matching ------------------------------------------------------------------------------

def server_key(request: SipRequest) -> tuple:
    """The key a request's server transaction is filed under (§17.2.3)."""
    via = request.top_via()
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC):
        return ("3261", branch, via.host, via.port, method)
    to_tag = request.address("To").tag if request.method != "ACK" else None
    return ("2543", str(request.uri), request.address("From").tag, to_tag, request.call_id,
            request.cseq().number, method, str(via))


def client_key(message: SipRequest | SipResponse) -> tuple:
    """The key a request's client transaction is filed under, or a response's (§17.1.3)."""
    return (message.top_via().branch or "", message.cseq().method)


@dataclass
class TransactionTable:
    """Transactions by key with the earliest deadline first; the shell's one timer."""

    server: dict[tuple, ServerTransaction] = field(default_factory=dict)
    client: dict[tuple, ClientTransaction] = field(default_factory=dict)

    def next_timer(self) -> float | None:
        deadlines = [t for tx in (*self.server.values(), *self.client.values()) if (t := tx.next_timer()) is not None]
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> list[tuple[Transaction, list[Action]]]:
        fired = []
        for table in (self.server, self.client):
            for key, tx in list(table.items()):
                deadline = tx.next_timer()
                if deadline is not None and deadline <= now:
                    fired.append((tx, tx.handle_timer(now)))
                if tx.terminated:
                    del table[key]
        return fired

    def __len__(self) -> int:
        return len(self.server) + len(self.client)
