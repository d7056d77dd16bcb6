"""The election policy with a fake clock: every rule of ``colony.cluster.election``, no bus."""

from __future__ import annotations

import pytest

from colony.cluster.election import (
    Acquire,
    Election,
    LeaseSeen,
    Probe,
    ProbeFirst,
    ProbeResult,
    Renew,
    StepDown,
    StopActing,
    Tenure,
    Wait,
)

TTL, RENEW, MARGIN = 3.0, 0.5, 1.0
GONE, SILENT = ProbeResult(Probe.GONE), ProbeResult(Probe.SILENT)


def answered(epoch: int) -> ProbeResult:
    return ProbeResult(Probe.ANSWERED, epoch=epoch)


def policy(me: str = "c2") -> Election:
    return Election(me, ttl=TTL, renew_interval=RENEW)


def run(election: Election, now: float, lease: LeaseSeen | None, standbys=(), answers=None, accepting=True):
    """Drive one round as the controller shell does: answer every ProbeFirst from ``answers``,
    and record which nodes were asked."""
    answers = answers or {}
    probes, asked = {}, []
    while True:
        action = election.standby_step(now, accepting=accepting, lease=lease, standbys=standbys, probes=probes)
        if not isinstance(action, ProbeFirst):
            return action, asked
        asked.extend(action.nodes)
        probes.update({node: answers[node] for node in action.nodes})


HELD_BY_C1 = LeaseSeen(holder="c1", revision=7, epoch=5)


# --- a vacant lease -------------------------------------------------------------------------

def test_the_backup_creates_a_vacant_lease_at_once():
    action, asked = run(policy("c2"), 100.0, None, standbys=("c2", "c3"))
    assert action == Acquire(None, "vacant")
    assert asked == [], "nobody is ahead of the backup: nothing to probe"


def test_a_lone_controller_not_yet_ready_still_takes_a_vacant_lease():
    # At start-up its own record is not READY yet, so it is not among the standbys.
    action, _ = run(policy("c1"), 100.0, None, standbys=())
    assert action == Acquire(None, "vacant")


def test_the_nth_standby_waits_n_rank_delays_counted_from_when_it_first_could_move():
    election = policy("c3")
    answers = {"c1": answered(0), "c2": SILENT}  # both ahead of it still answer (SILENT is not proof)
    action, asked = run(election, 100.0, None, standbys=("c1", "c2", "c3"), answers=answers)
    assert asked == ["c1", "c2"]
    assert action == Wait(102.0)
    assert run(election, 101.99, None, standbys=("c1", "c2", "c3"), answers=answers)[0] == Wait(102.0)
    assert run(election, 102.0, None, standbys=("c1", "c2", "c3"), answers=answers)[0] == Acquire(None, "vacant")


def test_standbys_ahead_that_are_provably_gone_do_not_count():
    election = policy("c3")
    action, _ = run(election, 100.0, None, standbys=("c1", "c2", "c3"), answers={"c1": GONE, "c2": GONE})
    assert action == Acquire(None, "vacant")
    election = policy("c3")
    action, _ = run(election, 100.0, None, standbys=("c1", "c2", "c3"), answers={"c1": GONE, "c2": answered(0)})
    assert action == Wait(101.0), "one live standby ahead: one rank delay"


def test_a_controller_not_among_the_standbys_ranks_behind_all_of_them():
    action, _ = run(policy("c9"), 100.0, None, standbys=("c1", "c2"), answers={"c1": answered(0), "c2": answered(0)})
    assert action == Wait(102.0)


# --- a lease held by someone else -----------------------------------------------------------

def test_a_live_holder_is_left_alone():
    election = policy()
    action, asked = run(election, 100.0, HELD_BY_C1, standbys=("c2",), answers={"c1": answered(5)})
    assert asked == ["c1"]
    assert action == Wait(100.0 + TTL)


def test_fast_takeover_when_the_holder_is_provably_gone():
    action, asked = run(policy(), 100.0, HELD_BY_C1, standbys=("c2", "c3"), answers={"c1": GONE})
    assert asked == ["c1"]
    assert action == Acquire(7, "taken-over", previous="c1"), "a CAS on the revision seen, no waiting for expiry"


def test_a_holder_that_answers_with_another_epoch_has_abandoned_the_lease():
    # A restarted process of the same name stands by (epoch 0) while its old lease lingers.
    action, _ = run(policy(), 100.0, HELD_BY_C1, standbys=("c2",), answers={"c1": answered(0)})
    assert action == Acquire(7, "taken-over", previous="c1")


def test_proof_of_absence_still_respects_rank():
    election = policy("c3")
    answers = {"c1": GONE, "c2": answered(0)}
    action, asked = run(election, 100.0, HELD_BY_C1, standbys=("c2", "c3"), answers=answers)
    assert asked == ["c1", "c2"], "the holder first, then the standbys ahead"
    assert action == Wait(101.0)
    assert run(election, 101.0, HELD_BY_C1, standbys=("c2", "c3"), answers=answers)[0] == Acquire(7, "taken-over", previous="c1")


def test_a_silent_holder_is_replaced_only_after_its_revision_stood_still_for_a_whole_ttl():
    election = policy()
    answers = {"c1": SILENT}  # SIGSTOP: it keeps its subscription, so no proof of absence
    assert run(election, 100.0, HELD_BY_C1, standbys=("c2",), answers=answers)[0] == Wait(103.0)
    assert run(election, 102.9, HELD_BY_C1, standbys=("c2",), answers=answers)[0] == Wait(103.0)
    action, asked = run(election, 103.0, HELD_BY_C1, standbys=("c2",), answers=answers)
    assert action == Acquire(7, "expired", previous="c1")
    assert asked == [], "once stale, the holder is not asked again"


def test_a_renewal_restarts_the_unchanged_revision_clock():
    election = policy()
    answers = {"c1": SILENT}
    run(election, 100.0, HELD_BY_C1, standbys=("c2",), answers=answers)
    renewed = LeaseSeen(holder="c1", revision=8, epoch=5)
    assert run(election, 102.5, renewed, standbys=("c2",), answers=answers)[0] == Wait(105.5)
    assert run(election, 105.0, renewed, standbys=("c2",), answers=answers)[0] == Wait(105.5)
    assert run(election, 105.5, renewed, standbys=("c2",), answers=answers)[0] == Acquire(8, "expired", previous="c1")


def test_a_holder_found_alive_resets_the_rank_wait():
    election = policy("c3")
    gone = {"c1": GONE, "c2": answered(0)}
    assert run(election, 100.0, HELD_BY_C1, standbys=("c2", "c3"), answers=gone)[0] == Wait(101.0)
    # The holder was only reconnecting: it answers again, so the wait starts over next time.
    assert run(election, 100.5, HELD_BY_C1, standbys=("c2", "c3"), answers={"c1": answered(5)})[0] == Wait(103.0)
    assert run(election, 101.0, HELD_BY_C1, standbys=("c2", "c3"), answers=gone)[0] == Wait(102.0)


def test_a_lapsed_holder_does_not_hold_the_backup_back_when_its_lease_turns_vacant():
    """SIGSTOP: the server expires the paused holder's lease (often before the standbys' own
    unchanged-revision rule fires); its record is still READY, so with no holder to exclude it
    heads the standby order, and it answers nothing (SILENT, not GONE)."""
    election = policy("c2")
    assert run(election, 100.0, HELD_BY_C1, standbys=("c2", "c3"), answers={"c1": SILENT})[0] == Wait(103.0)
    action, asked = run(election, 102.0, None, standbys=("c1", "c2", "c3"), answers={"c1": SILENT})
    assert action == Acquire(None, "vacant")
    assert asked == []


def test_a_lease_left_by_an_earlier_incarnation_of_myself_is_taken_over_at_once():
    mine = LeaseSeen(holder="c2", revision=9, epoch=9)
    action, asked = run(policy("c2"), 100.0, mine, standbys=("c1", "c2"), answers={})
    assert action == Acquire(9, "taken-over", previous="c2")
    assert asked == []


def test_winning_forgets_the_rank_wait():
    election = policy("c3")
    answers = {"c2": answered(0)}
    assert run(election, 100.0, None, standbys=("c2", "c3"), answers=answers)[0] == Wait(101.0)
    election.won()
    assert run(election, 200.0, None, standbys=("c2", "c3"), answers=answers)[0] == Wait(201.0)


# --- draining -------------------------------------------------------------------------------

@pytest.mark.parametrize("lease", [None, HELD_BY_C1], ids=["vacant", "held"])
def test_a_draining_controller_does_not_stand(lease):
    action, asked = run(policy(), 100.0, lease, standbys=("c2",), answers={"c1": GONE}, accepting=False)
    assert action == Wait()
    assert asked == []


def test_a_draining_holder_steps_down():
    tenure = Tenure(100.0, TTL, MARGIN)
    assert isinstance(policy().holder_step(100.1, accepting=False, tenure=tenure), StepDown)


# --- the holder -----------------------------------------------------------------------------

def test_the_holder_renews_every_interval_from_its_last_successful_write():
    election = policy()
    tenure = Tenure(100.0, TTL, MARGIN)
    assert election.holder_step(100.2, accepting=True, tenure=tenure) == Wait(100.5)
    assert election.holder_step(100.5, accepting=True, tenure=tenure) == Renew()
    # A renewal that failed for a time-out did not move the tenure: it is still due.
    assert election.holder_step(100.7, accepting=True, tenure=tenure) == Renew()
    assert election.holder_step(100.8, accepting=True, tenure=Tenure(100.7, TTL, MARGIN)) == Wait(101.2)


def test_self_fencing_stops_acting_a_safety_margin_before_the_lease_can_expire():
    tenure = Tenure(100.0, TTL, MARGIN)
    assert tenure.acting(101.99) and tenure.remaining(101.5) == pytest.approx(0.5)
    assert not tenure.acting(102.0), "ttl - margin after the write was sent"
    assert tenure.remaining(150.0) == 0.0
    action = policy().holder_step(102.0, accepting=True, tenure=tenure)
    assert isinstance(action, StopActing) and "deadline" in action.why


def test_the_holder_stops_before_a_standby_may_take_over():
    """The invariant the two clocks give: the holder sent its write no later than the standby
    saw the revision, so it stops acting (ttl - margin after sending) before any standby's
    unchanged-revision rule fires (ttl after seeing)."""
    sent, seen = 100.0, 100.3  # the standby read the new revision 0.3 s after it was sent
    tenure = Tenure(sent, TTL, MARGIN)
    standby = policy("c2")
    lease = LeaseSeen(holder="c1", revision=7, epoch=5)
    t = seen
    while True:
        action, _ = run(standby, t, lease, standbys=("c2",), answers={"c1": SILENT})
        if isinstance(action, Acquire):
            break
        t = round(t + 0.1, 6)
    assert not tenure.acting(t)
    assert t - tenure.until >= MARGIN


def test_the_safety_margin_must_be_shorter_than_the_lease():
    with pytest.raises(ValueError, match="COLONY_CONTROLLER_SAFETY_MARGIN"):
        Tenure(0.0, ttl=1.0, safety_margin=1.0)
