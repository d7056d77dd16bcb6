"""The UDP branches a member put on the wire itself, entrusted to one other member in case it
dies while they ring (RFC 3261 §9.1, §16.8).

Theory of operation
-------------------
The Call-ID's owner forks an INVITE; a branch to a UDP phone that the owner sends from its own
socket (the caller's packet came to the owner itself) is known to nobody else.  When the owner
dies (SIGKILL) its fork dies with it: nobody gathers that phone's answer or cancels its ringing,
and the caller, whose INVITE had its 100 and 180, waits for a final answer that never comes.

A CANCEL needs no more than the INVITE as kept for one (``sent_invites.kept_of``: its
Request-URI, Vias, From, To, Call-ID, CSeq, Route) and where it went: the phone matches it to
its INVITE by the top Via's branch and sent-by (§9.2, §17.2.3), not by the packet's source, so
another member can send it from its own socket.  So the forker tells one other member -- the
Call-ID's next owner by the rendezvous hash the farm spreads with, which also takes the caller's
retransmissions and CANCEL once the forker is out of the spread -- in one signed inner-relay
datagram per such branch (``inner_frames.seal_entrusted``), and that member keeps it here
(``EntrustedBranches``).  When it sees the forker gone (the shell's test for every other case
of a dead member) it CANCELs each branch, ACKs the phone's 487 (``workload.CancelledInvites``)
and fails the branch with 430 made from the kept INVITE (all its Vias), which reaches the
caller as 480.

A member that keeps branches and stops (a drain's end, a rolling upgrade) or dies takes them
with it: the forker, which sees it gone as any member does -- or restarted under its name
before its heartbeat went stale (a new ``started_at``) -- entrusts those still without a
final answer again, from the INVITE it kept for their ACK (``sent_invites``), to the next
choice -- else a rolling upgrade left every branch entrusted before it unguarded.

A branch that got a final answer is forgotten: the forker notes it (``Entrustments``) and the
branches to forget ride on its next frame to that member, or on a frame of their own at most
once a second and as it stops -- no datagram of their own per call.  One not forgotten yet (its answer came in
the last second, or to another member) costs a CANCEL that does nothing (§9.2: the INVITE has
its final answer) and a late 480 the caller's transaction absorbs -- harmless, and bounded:
the newest ``limit`` entries, none older than ``lifetime`` (a fork's).

A retransmission of the caller's INVITE that reaches the new owner is forked there again with
the same branch (the branch is a MAC of the caller's Via, Call-ID and CSeq, the same on every
member): under the new owner's own Via the phone would take it for a merged request (§8.2.2.2:
482) or ring a second time.  It goes out under the entrusted INVITE's top Via instead
(``adopt``): to the phone it is a copy of the INVITE it rings for, and the branch is the new
owner's now (not cancelled).  A CANCEL from the caller goes out under it too, so it matches.

Pure: time is an argument.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from colony.protocols.sip.message import SipRequest
from colony.protocols.sip.transaction import Destination

DEFAULT_LIMIT = 20_000
# Branches named in one frame at most: ``inner_frames`` bounds a frame's first line, and a
# member answering faster than it forks sends the rest in the next frame or the next second.
FORGOTTEN_PER_FRAME = 64
# Answered branches waiting to be told per member at most: past it the oldest are not told
# (their entries then cost a CANCEL that does nothing, if the forker dies within their lifetime).
FORGOTTEN_WAITING = 4096


@dataclass(slots=True)
class EntrustedBranch:
    forker: str                  # node key of the member that forked it and put it on the wire
    invite: SipRequest           # as kept for a CANCEL (sent_invites.kept_of)
    destination: Destination     # where it went
    at: float


class EntrustedBranches:
    """At the member a forker chose: its UDP branches, by our branch, until answered or old."""

    def __init__(self, lifetime: float, limit: int = DEFAULT_LIMIT) -> None:
        self.lifetime, self.limit = lifetime, limit
        self._entries: OrderedDict[str, EntrustedBranch] = OrderedDict()
        # Entries per forker: the shell asks every second which forkers to look at (forkers()).
        self._per_forker: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def entrust(self, forker: str, invite: SipRequest, destination: Destination, now: float) -> None:
        branch = invite.top_via().branch or ""
        self._remove(branch)
        self._entries[branch] = EntrustedBranch(forker, invite, destination, now)
        self._per_forker[forker] = self._per_forker.get(forker, 0) + 1
        self._drop_old(now)

    def forget(self, forker: str, branches: list[str]) -> None:
        """``forker``'s branches that got a final answer (only its own: a frame names its sender)."""
        for branch in branches:
            entry = self._entries.get(branch)
            if entry is not None and entry.forker == forker:
                self._remove(branch)

    def forkers(self) -> list[str]:
        return list(self._per_forker)

    def orphaned_by(self, forker: str, now: float) -> list[EntrustedBranch]:
        """``forker`` is gone: its branches still kept (none older than ``lifetime``), each
        returned once."""
        self._drop_old(now)
        if forker not in self._per_forker:
            return []
        found = [branch for branch, entry in self._entries.items() if entry.forker == forker]
        return [entry for branch in found if (entry := self._remove(branch)) is not None]

    def get(self, branch: str, now: float) -> EntrustedBranch | None:
        entry = self._entries.get(branch)
        return entry if entry is not None and entry.at > now - self.lifetime else None

    def adopt(self, branch: str, destination: Destination, now: float) -> EntrustedBranch | None:
        """The caller's INVITE is forked here again and its branch ``branch`` goes to
        ``destination``: if that is where the entrusted one went, it is this member's now
        (no longer cancelled when its forker is seen gone) and returned, for its top Via."""
        entry = self.get(branch, now)
        if entry is None or entry.destination != destination:
            return None
        return self._remove(branch)

    def _drop_old(self, now: float) -> None:
        entries = self._entries
        while entries and (len(entries) > self.limit or next(iter(entries.values())).at <= now - self.lifetime):
            self._remove(next(iter(entries)))

    def _remove(self, branch: str) -> EntrustedBranch | None:
        entry = self._entries.pop(branch, None)
        if entry is not None:
            left = self._per_forker[entry.forker] - 1
            if left:
                self._per_forker[entry.forker] = left
            else:
                del self._per_forker[entry.forker]
        return entry


class Entrustments:
    """At the forker: which member holds each branch it entrusted, and the answered branches
    that member is to forget, told on the next frame to it (``to_forget``)."""

    def __init__(self, lifetime: float, limit: int = DEFAULT_LIMIT) -> None:
        self.lifetime, self.limit = lifetime, limit
        self._branches: OrderedDict[str, tuple[str, float]] = OrderedDict()   # branch -> (member, when told)
        self._answered: dict[str, list[str]] = {}                              # member -> branches to forget
        # Branches per member holding them: the shell asks every second which are gone (keepers()).
        self._held: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._branches)

    def entrusted(self, branch: str, member: str, now: float) -> bool:
        """``branch`` is to be told to ``member``; False when it was told already (the caller's
        retransmission, or our own, starts nothing new)."""
        branches = self._branches
        if branch in branches:
            return False
        branches[branch] = (member, now)
        self._held[member] = self._held.get(member, 0) + 1
        while branches and (len(branches) > self.limit or next(iter(branches.values()))[1] <= now - self.lifetime):
            self._released(branches.popitem(last=False)[1][0])
        return True

    def keepers(self) -> list[str]:
        """The members holding branches of ours."""
        return list(self._held)

    def taken_back(self, member: str) -> list[str]:
        """``member`` is gone with what it held: the branches it had, forgotten here, for the
        shell to entrust again to another member."""
        if member not in self._held:
            return []
        found = [branch for branch, (holder, _) in self._branches.items() if holder == member]
        for branch in found:
            del self._branches[branch]
        del self._held[member]
        return found

    def _released(self, member: str) -> None:
        left = self._held.get(member, 0) - 1
        if left > 0:
            self._held[member] = left
        else:
            self._held.pop(member, None)

    def answered(self, branch: str) -> None:
        """A final answer came for ``branch``: its member may forget it."""
        found = self._branches.pop(branch, None)
        if found is None:
            return
        self._released(found[0])
        waiting = self._answered.setdefault(found[0], [])
        waiting.append(branch)
        if len(waiting) > FORGOTTEN_WAITING:
            del waiting[:len(waiting) - FORGOTTEN_WAITING]

    def waiting(self) -> list[str]:
        """The members with answered branches not told yet."""
        return list(self._answered)

    def to_forget(self, member: str) -> list[str]:
        """Up to ``FORGOTTEN_PER_FRAME`` answered branches for a frame to ``member``, the rest
        left for the next."""
        waiting = self._answered.get(member)
        if not waiting:
            return []
        taken, rest = waiting[:FORGOTTEN_PER_FRAME], waiting[FORGOTTEN_PER_FRAME:]
        if rest:
            self._answered[member] = rest
        else:
            del self._answered[member]
        return taken

    def drop(self, member: str) -> None:
        """``member`` is gone: nothing to tell it any more."""
        self._answered.pop(member, None)
