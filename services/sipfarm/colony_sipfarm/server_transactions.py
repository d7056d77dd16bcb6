"""The proxy's server transactions for in-dialog requests it forwards (RFC 3261 §16.2, §17.2).

Theory of operation
-------------------
A caller over UDP sends its request again until it hears an answer (Timer A/E, §17.1).  A
stateful proxy matches such a copy to the server transaction of the first (§17.2.3: top Via
branch, sent-by, method) and *absorbs* it: the transaction sends the last answer it has, or
nothing, and nothing goes downstream -- downstream the member's own client transaction
retransmits (``retransmission.py``).  Forwarded again, each copy was a second request at the
callee (two re-INVITEs or BYEs on the wire for every lost answer), and under load every
copy was work again.

What is kept, per transaction (``forwarded``), is only what its copies are answered with,
as the farm keeps its own answers (``SipFarm._answers``):

* an INVITE (a re-INVITE) starts with the 100 Trying the member sends at once (§17.2.1: it
  quenches the caller's copies); a later provisional answer replaces it, a non-2xx final
  answer replaces that (Completed).  After a 2xx the copies are absorbed unanswered (RFC 6026
  Accepted: the 2xx is the callee's to send again, end to end);
* a non-INVITE starts with nothing (§16.2: no 100 for a non-INVITE): a copy before any
  answer is absorbed silently; then the last provisional answer, then the final (Completed).

Each entry lives ``lifetime`` (64*T1, the longest a caller retransmits) after its last
change, at most ``limit`` of them (the oldest go first).  A copy that finds no entry -- too
late, evicted, handled by another member -- is forwarded as before, and the callee's own
server transaction answers it: the stateless proxy's behaviour (§16.11) is the fallback,
never a lost request.

Which requests have an entry is the farm's choice (``farm.py``): requests that came over UDP
(a caller on a connection never retransmits, §17.1.1.2) -- of a dialog when this member puts
them on the wire itself, since their responses come back here (our Via names this member) and
give the entry its answers; and every initial request but INVITE and CANCEL (a MESSAGE,
OPTIONS, SUBSCRIBE ...), whose copies would otherwise meet the caller's credentials again as a
replayed nonce.  When another member puts such a request on the wire (the callee's
connection, or UDP from the address the caller talked to, which handed it over), its entry
starts with the request as forwarded (``trying``), so each copy goes that way again and the
callee's own transaction answers it (a hand-over lost inside the farm is then a packet lost
on the wire, which the caller's copies make good).  An ACK is never one: the ACK of a 2xx is a transaction of its
own, and an ACK of a failure is not answered.  No timer of our own runs (Timer G would resend
a non-2xx final to a caller that lost it; the caller's copies get it instead).

Pure: time is an argument (``now``); the values kept are opaque to this module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Answer = TypeVar("Answer")

DEFAULT_LIMIT = 20_000


@dataclass
class _Entry(Generic[Answer]):
    expires_at: float
    invite: bool
    last: list[Answer] = field(default_factory=list)    # what a copy is answered with now
    final: bool = False                                 # a final answer came
    accepted: bool = False                              # ... and it was an INVITE's 2xx


class ProxyServerTransactions(Generic[Answer]):
    def __init__(self, lifetime: float, limit: int = DEFAULT_LIMIT) -> None:
        self.lifetime, self.limit = lifetime, limit
        self._entries: OrderedDict[Hashable, _Entry[Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def forwarded(self, key: Hashable, invite: bool, now: float, trying: list[Answer] | None = None) -> None:
        """The request filed under ``key`` went downstream; ``trying``: what a copy gets until an
        answer comes (the 100 sent for an INVITE; the forwarded request, sent again)."""
        self._entries[key] = _Entry(now + self.lifetime, invite, list(trying or ()))
        self._entries.move_to_end(key)
        self._drop_old(now)

    def copy(self, key: Hashable, now: float) -> list[Answer] | None:
        """A request filed under ``key`` came again: what to answer it with (``[]``: absorbed,
        nothing to say), or None when no transaction has it (forward it)."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= now:
            return None
        return [] if entry.accepted else list(entry.last)

    def answered(self, key: Hashable, status: int, answer: list[Answer], now: float) -> None:
        """A response with ``status`` to the request filed under ``key`` was passed on as ``answer``."""
        entry = self._entries.get(key)
        if entry is None or entry.final:
            return        # not ours, or a retransmitted final (or another 2xx of a fork)
        entry.last = list(answer)
        if status >= 200:
            entry.final = True
            entry.accepted = entry.invite and status < 300
        entry.expires_at = now + self.lifetime     # Timer J / L: from the final answer on
        self._entries.move_to_end(key)

    def _drop_old(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.limit or next(iter(entries.values())).expires_at <= now):
            entries.popitem(last=False)
