"""The proxy's client transactions for requests it forwards over UDP (RFC 3261 §16.6 step 11).

Theory of operation
-------------------
The farm routes statelessly -- any member takes any packet -- but UDP loses packets, and a
phone that loses the proxy's INVITE must not stay silent while the caller waits.  So the member
that *puts a forwarded request on the wire* (the one whose address the farm Via names, where
the responses come back) runs a client transaction for it from the sans-IO core
(``colony.protocols.sip.transaction.ClientTransaction``), which owns the timers:

* Timer A (INVITE) / E (non-INVITE): retransmit at T1, doubling (E capped at T2); an
  INVITE stops at its first provisional, a non-INVITE goes on at T2 while proceeding.
* Timer B / F (64*T1): no answer at all -- the branch failed.  ``expire`` hands back a 408
  made from the request as if that branch had answered it; the shell feeds it to the farm
  like any response, so the fork logic counts the branch as failed and the caller hears the
  best failure (§16.7: a timed-out branch counts as 408).  The 408 carries no To tag: it
  is never ACKed downstream (a UAS tags every final answer it sends, §8.2.6.2).

Responses stop the timers; the farm passes them on as before (§16.11) and ACKs failures
itself -- except a retransmitted final answer to a non-INVITE the transaction already has
(§17.1.2.2: absorbed in Completed), which is dropped here: under load the phone repeats its
answer to our retransmissions, and passing every copy on would multiply the work.  A copy of
a request from a UDP caller (in a dialog, or an initial one but INVITE and CANCEL) is absorbed
by the farm's server transaction (``server_transactions.py``); any other request the caller
retransmits is forwarded again, as a stateless proxy does, but starts no second transaction.  ACKs have no transaction; reliable transports (TCP, TLS, WS) retransmit nothing.

The table is bounded (``limit``): beyond it requests still go out, without retransmission.
An INVITE transaction that had a provisional answer has no timer of its own (§17.1.1.2: the
proxy's Timer C ends it, by a CANCEL whose 487 completes it); when the phone is gone for
good -- switched off while it rang -- nothing ever does, so an entry leaves the table
``lifetime`` after it started whatever its state (longer than Timer C and the CANCEL's 64*T1):
such entries filled it, and then nothing this member forwarded was retransmitted any more.
Time is an argument (``now``); the shell sleeps until ``next_deadline()``.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from colony.protocols.sip.message import SipRequest, SipResponse, make_response
from colony.protocols.sip.transaction import (ClientTransaction, Destination, State, TimedOut, Timers, Transmit,
                                              client_key)

DEFAULT_LIMIT = 20_000
DEFAULT_LIFETIME = 300.0     # seconds: Timer C (200 s at the fork) and a CANCEL's 64*T1, with room


@dataclass(frozen=True)
class Due:
    """What the timers asked for: bytes to send again, and 408s of branches that timed out
    (each with the address the request went to, the response's apparent source)."""

    retransmit: list[tuple[bytes, Destination, str]]          # (data, destination, method)
    timed_out: list[tuple[SipResponse, Destination]]


class ProxyClientTransactions:
    def __init__(self, timers: Timers = Timers(), limit: int = DEFAULT_LIMIT,
                 lifetime: float = DEFAULT_LIFETIME) -> None:
        self.timers, self.limit, self.lifetime = timers, limit, lifetime
        # In the order they started (the oldest first, for _drop_old): key -> (transaction,
        # the request as sent, when it started, the node key of the member whose fork it is).
        self._running: dict[tuple, tuple[ClientTransaction, bytes, float, str]] = {}
        self._heap: list[tuple[float, int, tuple]] = []       # (deadline, tie-break, key); stale entries skipped
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._running)

    def sent(self, request: SipRequest, data: bytes, destination: Destination, now: float, forker: str = "") -> bool:
        """``data`` (the encoded ``request``) went to ``destination`` over UDP: start its client
        transaction (``forker``: the member whose fork an INVITE is, when another made it).
        False when none was started (one runs already: the caller retransmitted; an ACK; the
        table is full)."""
        self._drop_old(now)
        if request.method == "ACK" or len(self._running) >= self.limit:
            return False
        key = client_key(request)
        if key in self._running:
            return False
        tx = ClientTransaction(request, destination, reliable=False, timers=self.timers)
        tx.start(now)
        self._running[key] = (tx, data, now, forker)
        self._schedule(key, tx)
        return True

    def _drop_old(self, now: float) -> None:
        running = self._running
        while running:
            key = next(iter(running))
            if running[key][2] > now - self.lifetime:
                return
            del running[key]

    def received(self, response: SipResponse, now: float) -> bool:
        """A response came: move its transaction on (stops retransmission).  False when the
        farm should not pass it on (a retransmission the transaction absorbed)."""
        found = self._running.get(client_key(response))
        if found is None:
            return True        # not ours, or its transaction ended: stateless forwarding
        tx, before = found[0], found[0].next_timer()
        actions = tx.on_response(response, now)      # its ACK of a failure is the farm's to send
        if tx.terminated:
            del self._running[client_key(response)]
        elif tx.next_timer() != before:
            self._schedule(client_key(response), tx)
        return bool(actions) or tx.invite

    def forked_by(self, forker: str) -> list[tuple[SipRequest, bytes, Destination]]:
        """The member ``forker`` is gone, and the forks it kept: its INVITEs without a final
        answer leave the table (nothing will gather their answers) and are returned, for the
        shell to cancel."""
        found = [(key, tx, data) for key, (tx, data, _, by) in self._running.items()
                 if by == forker and tx.invite and tx.state in (State.CALLING, State.PROCEEDING)]
        for key, _, _ in found:
            del self._running[key]
        return [(tx.request, data, tx.destination) for _, tx, data in found]

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, key = self._heap[0]
            found = self._running.get(key)
            if found is not None and found[0].next_timer() == deadline:
                return deadline
            heapq.heappop(self._heap)      # stale: the transaction moved on or ended
        return None

    def expire(self, now: float) -> Due:
        retransmit: list[tuple[bytes, Destination, str]] = []
        timed_out: list[tuple[SipResponse, Destination]] = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, key = heapq.heappop(self._heap)
            tx, data, _, _ = self._running[key]
            for action in tx.handle_timer(now):
                if isinstance(action, Transmit):
                    retransmit.append((data, tx.destination, tx.request.method))
                elif isinstance(action, TimedOut):
                    timed_out.append((make_response(tx.request, 408, to_tag=None), tx.destination))
            if tx.terminated:
                del self._running[key]
            else:
                self._schedule(key, tx)
        self._drop_old(now)
        return Due(retransmit, timed_out)

    def _schedule(self, key: tuple, tx: ClientTransaction) -> None:
        deadline = tx.next_timer()
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._order), key))
