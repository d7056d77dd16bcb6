"""Controller election as a pure policy: observations in, actions out, time as an argument.

Theory of operation
-------------------
Each controller runs one ``Election``.  Its asyncio shell
(``colony_controller.controller``) reads the lease, asks the policy what to do, performs
the answer (one CAS write, a few probes, or nothing) and reports the outcome.  Nothing in
here reads a clock, touches the bus or sleeps, so every rule below is a unit test with a
fake clock (``tests/unit/test_election.py``).

Who may act is decided by compare-and-set writes on the lease (``colony.cluster.lease``),
never by what this policy believes: the policy only decides *when to try*.  A wrong guess
costs a refused CAS or a needless handover, never two controllers acting at once.

A **standby** (``standby_step``) looks at the lease it last read:

* vacant: it may ``create`` it (``Acquire(None, "vacant")``), subject to its rank;
* held by itself (an earlier incarnation of the same id): abandoned by definition, so it
  replaces it at once (``Acquire(rev, "taken-over")``);
* held by another: the holder is probed on its ``colony.ctl.alive.<id>`` subject
  (``ProbeFirst``).  ``GONE`` ("no responders": the server dropped the holder's
  subscriptions, so its connection is closed) or an answer naming another epoch (a live
  process that no longer holds it) is **proof of absence**: replace the lease with a CAS on
  the revision seen, without waiting for it to expire.  ``SILENT`` (a time-out: paused or
  partitioned) is not proof, so the standby waits until it has seen the **same revision for
  a whole TTL** on its own clock; by then the holder has fenced itself (see ``Tenure``) and
  the standby replaces it (``"expired"``) without depending on when the server gets round to
  expiring the key.

Rank: standbys are ordered oldest first (``colony.cluster.view.standby_order``; the first is
the Backup Controller shown by ``colony status``).  Whoever is ranked ``n`` among the
standbys ahead of it that still answer (``GONE`` ones do not count) waits ``n *
rank_delay`` seconds (``controller_rank_delay``), counted from the first moment it found the
lease takeable, so the backup moves first and the others only if it did not.  The last holder
seen never counts: when its lease lapses on the server (a vacancy) its record still says
READY, and a paused holder is not provably gone.

A **holder** (``holder_step``) renews every ``renew_interval``, gives the lease up when its
instance stops accepting work (drain, stop: ``StepDown``), and stops acting the moment its
``Tenure`` ends (``StopActing``): ``ttl - safety_margin`` after it *sent* its last
successful write, which is never later than the server's own expiry.  A draining
controller does not stand for election at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

RANK_DELAY = 1.0  # seconds each standby ranked ahead (and still answering) is given to move first


# --- observations -------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaseSeen:
    """The lease as a read showed it: who holds it, its revision (the CAS target) and epoch."""

    holder: str
    revision: int
    epoch: int


class Probe(Enum):
    ANSWERED = "answered"  # the process answered, naming the epoch it acts under (0: standing by)
    SILENT = "silent"      # time-out: paused or partitioned, holds its subscription: not provably gone
    GONE = "gone"          # no responders: its connection is closed


@dataclass(frozen=True)
class ProbeResult:
    outcome: Probe
    epoch: int = 0


@dataclass(frozen=True)
class Tenure:
    """How long a holder may act: ``ttl - safety_margin`` from the moment it *sent* its last
    successful lease write.  The server started the lease's age later than that, so the
    holder always stops before the server could let anyone else in."""

    sent_at: float
    ttl: float
    safety_margin: float

    def __post_init__(self) -> None:
        check_margin(self.ttl, self.safety_margin)

    @property
    def until(self) -> float:
        return self.sent_at + self.ttl - self.safety_margin

    def acting(self, now: float) -> bool:
        return now < self.until

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


def check_margin(ttl: float, safety_margin: float) -> None:
    if safety_margin >= ttl:
        raise ValueError(f"the safety margin ({safety_margin:g}s) must be shorter than the lease ({ttl:g}s): "
                         "lower COLONY_CONTROLLER_SAFETY_MARGIN or raise COLONY_CONTROLLER_LEASE_TTL")


# --- actions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeFirst:
    """Ask these controllers' alive subjects and call ``standby_step`` again with the answers."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Acquire:
    """Write the lease: ``create`` when ``revision`` is None, else a CAS on ``revision``."""

    revision: int | None
    how: str  # "vacant", "expired", "taken-over": what ControllerElected.how says
    previous: str | None = None


@dataclass(frozen=True)
class Renew:
    """CAS the lease on our own last revision."""


@dataclass(frozen=True)
class StepDown:
    """Give the lease up at once (delete on our revision) so a successor need not wait."""

    why: str


@dataclass(frozen=True)
class StopActing:
    """Our tenure ended or a write proved the lease is someone else's: drop every duty now."""

    why: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do; look again no later than ``until`` (None: when something changes)."""

    until: float | None = None


Action = ProbeFirst | Acquire | Renew | StepDown | StopActing | Wait


# --- the policy -----------------------------------------------------------------------------

@dataclass
class Election:
    me: str
    ttl: float
    renew_interval: float
    rank_delay: float = RANK_DELAY
    _seen_revision: int = field(default=0, init=False)
    _last_holder: str | None = field(default=None, init=False)
    _seen_at: float = field(default=0.0, init=False)
    _takeable_since: float | None = field(default=None, init=False)

    def standby_step(self, now: float, *, accepting: bool, lease: LeaseSeen | None,
                     standbys: Sequence[str] = (), probes: Mapping[str, ProbeResult] | None = None) -> Action:
        """What a controller that does not hold the lease does next.

        ``standbys``: READY controllers other than the holder, oldest first (``standby_order``).
        ``probes``: the answers to every ``ProbeFirst`` of this round so far.
        """
        probes = probes or {}
        if not accepting:
            return Wait()  # draining or stopping: it does not stand
        if lease is None:
            return self._in_turn(now, standbys, probes, Acquire(None, "vacant"))
        self._last_holder = lease.holder
        if lease.holder == self.me:
            # Written by an earlier incarnation of this id: nobody acts under it any more.
            return Acquire(lease.revision, "taken-over", previous=self.me)
        if lease.revision != self._seen_revision:
            self._seen_revision, self._seen_at = lease.revision, now
        if now - self._seen_at >= self.ttl:
            # Unchanged for a whole lease length on our clock, which started no earlier than
            # the holder's: it has fenced itself.  The CAS fails if it renewed after all.
            how = "expired"
        else:
            answer = probes.get(lease.holder)
            if answer is None:
                return ProbeFirst((lease.holder,))
            if self._holder_alive(answer, lease.epoch):
                self._takeable_since = None
                return Wait(self._seen_at + self.ttl)
            how = "taken-over"
        return self._in_turn(now, standbys, probes, Acquire(lease.revision, how, previous=lease.holder))

    def holder_step(self, now: float, *, accepting: bool, tenure: Tenure) -> Action:
        """What the holder does next, given the tenure of its last successful write."""
        if not accepting:
            return StepDown("not ready (drain or stop)")
        if not tenure.acting(now):
            return StopActing("our own deadline passed before a renewal succeeded")
        due = tenure.sent_at + self.renew_interval
        if now >= due:
            return Renew()
        return Wait(due)

    def won(self) -> None:
        """The shell's Acquire succeeded: forget the standby's bookkeeping."""
        self._takeable_since = None

    # --- rules -------------------------------------------------------------------------------

    @staticmethod
    def _holder_alive(answer: ProbeResult, epoch: int) -> bool:
        if answer.outcome is Probe.GONE:
            return False
        if answer.outcome is Probe.SILENT:
            return True  # maybe only paused: wait for the unchanged-revision rule
        # A live process of that name that no longer holds this epoch has abandoned it.
        return answer.epoch == epoch

    def _in_turn(self, now: float, standbys: Sequence[str], probes: Mapping[str, ProbeResult],
                 action: Acquire) -> Action:
        """``action`` now if we are first among the standbys still answering, else after our rank's delay."""
        ahead = list(standbys[: standbys.index(self.me)] if self.me in standbys else standbys)
        # The holder whose lease just lapsed is still READY in the records until it is declared
        # FAILED, and a paused one answers nothing (not GONE): it must not hold the others back.
        ahead = [node for node in ahead if node != self._last_holder]
        missing = tuple(node for node in ahead if node not in probes)
        if missing:
            return ProbeFirst(missing)
        rank = sum(1 for node in ahead if probes[node].outcome is not Probe.GONE)
        if rank == 0:
            return action
        if self._takeable_since is None:
            self._takeable_since = now
        turn = self._takeable_since + rank * self.rank_delay
        return action if now >= turn else Wait(turn)
