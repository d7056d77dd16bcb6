"""The INVITEs a member forwarded, kept for the ACK of their failures (RFC 3261 §17.1.1.3).

Theory of operation
-------------------
A proxy's client transaction ACKs a non-2xx final answer itself, hop by hop: the ACK has the
Request-URI, the top Via (ours: same branch), From, Call-ID, CSeq number and Route header
fields of the INVITE *it sent*, the To of the answer, and goes where that INVITE went
(§17.1.1.3; Kamailio's tm builds it from the branch's outgoing request and sends it to that
branch's destination).  Nothing in the answer says where that was, nor the Request-URI: the
farm kept neither, and guessed from the callee's registrations -- for a re-INVITE another
device of the user than the one in the call (or nobody, the user being unregistered).

So the member that builds a forwarded INVITE keeps, per branch (our Via's branch), what an
ACK (and a CANCEL, §9.1: the branches still ringing when another answered) copies from it and
where it went, and the member that handles the answers finds it there:
an initial INVITE's answers go to its Call-ID's owner, which forked it; a re-INVITE's to the
member that loose-routed it (its Via's ``m``, ``SipFarm.handler_of``).

A failure marks the INVITE failed: the caller's own ACK of it -- the same branch as its
INVITE, hop by hop too -- ends at the farm then (§17.2.1: the server transaction absorbs it,
as tm's ``t_relay`` does), and a copy of the failure gets the ACK again (§17.1.1.2).  A 2xx
forgets the INVITE: its ACK is a transaction of the caller's own (§13.2.2.4), passed on.

A branch to a phone on a connection (TCP, TLS, WebSocket) held by a member that died is lost
while it rings: nothing the phone answers can reach the farm any more -- and nothing failed
the branch, so its caller heard nothing until Timer C (200 s).  The table knows, per member
holding the callee's connection, the branches without a final answer yet (``lost_with``):
when the shell sees that member gone, each fails as if it had answered 430 Flow Failed (RFC
5626 §5.3), made from the INVITE kept here -- all its Vias, so the answer finds its way back
up like the phone's would.  Not a UDP branch: its answers go to the address our Via names,
which may be the members' shared public address (one VIP, LVS direct routing), where a live
member takes them.

Bounded (``limit``, the oldest go first); an entry lives ``lifetime`` from its forwarding
(longer than an INVITE rings) and ``after_final`` from its failure (64*T1: the callee's
Timer G copies, the caller's ACK).  Pure: time is an argument.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from colony.protocols.sip.message import Headers, SipRequest
from colony.protocols.sip.transaction import Destination

DEFAULT_LIMIT = 20_000

# What an ACK (§17.1.1.3) or a CANCEL (§9.1) copies from its INVITE (with its top Via), and
# a response made for it repeats (every Via): the rest (the body, its Contact, our
# Record-Route) is not kept.
_COPIED = ("From", "To", "Call-ID", "CSeq", "Route")


@dataclass
class SentInvite:
    request: SipRequest          # the INVITE as sent, with only its Vias and what an ACK or CANCEL copies
    destination: Destination     # where it went
    # Node key of the member that put it on the wire: the one holding the callee's connection.
    member: str
    expires_at: float
    failed: bool = False
    # Timer C cancelled it and answered the caller (SipFarm.expire_forks): the phone's answer
    # to it (a 487) is ACKed and goes no further.
    ended: bool = False


def kept_of(request: SipRequest) -> SipRequest:
    """``request`` (a forwarded INVITE, our Via on top) with only its Vias and what an ACK or
    CANCEL copies: both take its top Via alone; a 430 made for a lost branch (``lost_with``)
    repeats them all, as the phone's answer would."""
    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    for name in _COPIED:
        for value in request.headers.get_all(name):
            headers.add(name, value)
    return SipRequest(headers=headers, method=request.method, uri=request.uri)


def cancel_of(invite: SipRequest) -> SipRequest:
    """The CANCEL of a kept INVITE (§9.1): its Request-URI, top Via, From, To, Call-ID, CSeq
    number and Route header fields."""
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID"):
        headers.add(name, invite.headers.get(name) or "")
    headers.add("CSeq", f"{invite.cseq().number} CANCEL")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    return SipRequest(headers=headers, method="CANCEL", uri=invite.uri)


class SentInvites:
    def __init__(self, lifetime: float, after_final: float, limit: int = DEFAULT_LIMIT) -> None:
        self.lifetime, self.after_final, self.limit = lifetime, after_final, limit
        self._entries: OrderedDict[str, SentInvite] = OrderedDict()
        # Branches on a connection with no final answer yet, by the member holding it (lost_with).
        self._unanswered: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def sent(self, branch: str, request: SipRequest, destination: Destination, member: str, now: float) -> None:
        """The INVITE ``request`` (our Via's ``branch`` on top) went to ``destination``."""
        self._finished(branch)
        self._entries[branch] = SentInvite(kept_of(request), destination, member, now + self.lifetime)
        self._entries.move_to_end(branch)
        if destination[0] != "UDP":
            self._unanswered.setdefault(member, set()).add(branch)
        self._drop_old(now)

    def get(self, branch: str, now: float) -> SentInvite | None:
        entry = self._entries.get(branch)
        return entry if entry is not None and entry.expires_at > now else None

    def failed(self, branch: str, now: float) -> SentInvite | None:
        """A non-2xx final answer (or a copy of it) came for ``branch``: the INVITE to ACK, if kept."""
        entry = self.get(branch, now)
        if entry is not None:
            if not entry.failed:
                self._finished(branch)
                entry.failed, entry.expires_at = True, now + self.after_final
            self._entries.move_to_end(branch)
        return entry

    def end(self, branch: str, now: float) -> SentInvite | None:
        """Timer C ended the fork of ``branch`` (§16.8): the INVITE to CANCEL, if it is kept
        and has no final answer yet -- from now on it counts as failed (its answer is ACKed)
        and as ended (that answer goes no further: the caller has had one).  Read whatever
        its lifetime: Timer C comes when it ends."""
        entry = self._entries.get(branch)
        if entry is None or entry.failed:
            return None
        self._finished(branch)
        entry.failed = entry.ended = True
        entry.expires_at = now + self.after_final
        return entry

    def ended(self, branch: str, now: float) -> bool:
        entry = self.get(branch, now)
        return entry is not None and entry.ended

    def answered(self, branch: str) -> None:
        """A 2xx came: nothing of ours to ACK, and the caller's ACK is its own transaction."""
        self._finished(branch)
        self._entries.pop(branch, None)

    def members(self) -> list[str]:
        """The members holding the connection of some branch without a final answer."""
        return list(self._unanswered)

    def lost_with(self, member: str, now: float) -> list[SentInvite]:
        """``member`` is gone, and with it the connections it held: the branches on them
        without a final answer, each marked failed now (as by its answer: the caller's ACK of what it
        gets ends here, and this is said once).  For the farm to fail them with 430."""
        lost = []
        for branch in self._unanswered.pop(member, ()):
            entry = self.get(branch, now)
            if entry is not None and not entry.failed:
                entry.failed, entry.expires_at = True, now + self.after_final
                lost.append(entry)
        return lost

    def acked(self, branch: str, now: float) -> bool:
        """The farm ACKed a failure of the INVITE ``branch``: an ACK from upstream with that
        branch is the caller's ACK of it, absorbed."""
        entry = self.get(branch, now)
        return entry is not None and entry.failed

    def _drop_old(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.limit or next(iter(entries.values())).expires_at <= now):
            branch, entry = entries.popitem(last=False)
            self._finished(branch, entry)

    def _finished(self, branch: str, entry: SentInvite | None = None) -> None:
        """``branch`` waits for no final answer any more (answered, failed, forgotten)."""
        entry = entry or self._entries.get(branch)
        waiting = self._unanswered.get(entry.member) if entry is not None else None
        if waiting is not None:
            waiting.discard(branch)
            if not waiting:
                del self._unanswered[entry.member]
