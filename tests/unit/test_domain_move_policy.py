"""The domain move's rules (colony.domain_move), pure: events in, next step out, a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from colony import events as ev
from colony import domain_move as dm

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTLE = timedelta(seconds=5)
DOMAIN = {"kind": "domain", "name": "acme.example", "home_region": "eu"}
REGIONS = ("eu", "us")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamped(event: ev.Event, seconds: float) -> ev.Event:
    return event.model_copy(update={"at": at(seconds)})


def copied(address: str, copy_pass: int, *, ok: bool = True, position: int = 0, epoch: int = 7) -> ev.Event:
    return ev.DomainMoveAccountCopied(domain="acme.example", move_id="m1", address=address, copy_pass=copy_pass,
                                      source_messages=10, target_messages=10 if ok else 9, source_digest="d",
                                      target_digest="d", source_position=position, epoch=epoch)


class Driver:
    """Plays the controller: asks for the next step, 'does' it, records the event."""

    def __init__(self, log: list[ev.Event], epoch: int = 7, accounts: tuple[str, ...] = ("a@acme.example",
                                                                                         "b@acme.example")):
        self.log, self.epoch, self.accounts = log, epoch, accounts
        self.cleaned = False
        self.copies: list[tuple[str, int, int]] = []

    def step(self, now: datetime) -> dm.Step:
        move = dm.fold(self.log)
        assert move is not None
        step = dm.next_step(move, dm.Observations(accounts=self.accounts, source_cleaned=self.cleaned), now=now,
                            epoch=self.epoch, settle=SETTLE)
        match step:
            case dm.Append(event):
                self.log.append(event.model_copy(update={"at": now}))
            case dm.CopyAccount(address, copy_pass, start):
                self.copies.append((address, copy_pass, start))
                self.log.append(copied(address, copy_pass, position=100 * copy_pass, epoch=self.epoch))
            case dm.CleanUpSource():
                self.cleaned = True
        return step

    def run(self, start: float, until: float) -> float:
        """Steps, jumping the clock to each wait's end, until finished; returns the clock."""
        now = at(start)
        while now <= at(until):
            step = self.step(now)
            if isinstance(step, dm.Finished):
                return (now - T0).total_seconds()
            if isinstance(step, dm.WaitUntil):
                assert step.when > now
                now = step.when
        raise AssertionError(f"not finished by {until}s: {dm.fold(self.log)}")


def requested() -> list[ev.Event]:
    return [stamped(e, 0) for e in dm.request_move(None, DOMAIN, "acme.example", "us", REGIONS, "m1", "root")]


def test_a_move_goes_through_every_phase_once_in_order_with_two_verified_passes():
    log = requested()
    driver = Driver(log)
    driver.run(0, 60)
    phases = [type(e).__name__ for e in log if not isinstance(e, ev.DomainMoveAccountCopied)]
    assert phases == ["DomainMoveRequested", "DomainMoveRouting", "DomainMoveCopying", "DomainMoveSealing",
                      "DomainMoveFlipped", "DomainMoveDone"]
    # pass 1 from the start, pass 2 from where pass 1 got to
    assert driver.copies == [("a@acme.example", 1, 0), ("b@acme.example", 1, 0),
                             ("a@acme.example", 2, 100), ("b@acme.example", 2, 100)]
    move = dm.fold(log)
    assert move.phase == dm.Phase.DONE and not move.active and driver.cleaned
    flipped = next(e for e in log if isinstance(e, ev.DomainMoveFlipped))
    assert flipped.target == "us" and flipped.epoch == 7
    assert move.progress()["accounts_verified"] == 2


def test_copying_waits_for_routing_to_settle_and_cleanup_for_the_flip_to_settle():
    log = requested()
    driver = Driver(log)
    assert isinstance(driver.step(at(0)), dm.Append)            # -> routing at t=0
    wait = driver.step(at(1))
    assert isinstance(wait, dm.WaitUntil) and wait.when == at(0) + SETTLE
    assert isinstance(driver.step(at(5)), dm.Append)            # -> copying, accounts fixed now
    assert dm.fold(log).accounts == ("a@acme.example", "b@acme.example")
    for _ in range(2):
        assert isinstance(driver.step(at(6)), dm.CopyAccount)
    assert isinstance(driver.step(at(6)), dm.Append)            # -> sealing at t=6
    assert isinstance(driver.step(at(7)), dm.WaitUntil)         # sessions get time to close
    for _ in range(2):
        assert isinstance(driver.step(at(11)), dm.CopyAccount)
    assert isinstance(driver.step(at(11)), dm.Append)           # -> flipped at t=11
    assert dm.fold(log).phase == dm.Phase.FLIPPED
    assert isinstance(driver.step(at(12)), dm.WaitUntil)        # nobody may still read the source
    assert isinstance(driver.step(at(16)), dm.CleanUpSource)
    assert isinstance(driver.step(at(16)), dm.Append)           # -> done
    assert isinstance(driver.step(at(17)), dm.Finished)


def test_sealing_waits_while_the_source_still_has_sessions():
    log = requested() + [stamped(e, s) for e, s in (
        (ev.DomainMoveRouting(domain="acme.example", move_id="m1", epoch=7), 0),
        (ev.DomainMoveCopying(domain="acme.example", move_id="m1", accounts=["a@acme.example"], epoch=7), 5),
        (copied("a@acme.example", 1, position=40), 6),
        (ev.DomainMoveSealing(domain="acme.example", move_id="m1", epoch=7), 6))]
    move = dm.fold(log)
    step = dm.next_step(move, dm.Observations(source_sessions=2), now=at(30), epoch=7, settle=SETTLE)
    assert isinstance(step, dm.WaitUntil) and "2 open" in step.why
    step = dm.next_step(move, dm.Observations(), now=at(30), epoch=7, settle=SETTLE)
    assert step == dm.CopyAccount("a@acme.example", 2, 40)


def test_a_new_controller_resumes_from_the_last_event_and_an_old_one_stands_down():
    log = requested()
    first = Driver(log, epoch=7)
    first.step(at(0))
    first.step(at(5))
    first.step(at(6))                                           # a@ copied once, then epoch 7 dies
    assert [c[0] for c in first.copies] == ["a@acme.example"]
    second = Driver(log, epoch=9)
    second.run(6, 60)
    assert [c[:2] for c in second.copies] == [("b@acme.example", 1), ("a@acme.example", 2), ("b@acme.example", 2)]
    assert dm.fold(log).phase == dm.Phase.DONE
    # the old controller, back from a pause, sees the newer epoch in the log and does nothing
    stale = dm.next_step(dm.fold(log[:-1]), dm.Observations(), now=at(60), epoch=7, settle=SETTLE)
    assert stale == dm.StandDown(9)


def test_a_repeated_append_after_a_lost_ack_changes_nothing():
    log = requested()
    routing = stamped(ev.DomainMoveRouting(domain="acme.example", move_id="m1", epoch=7), 1)
    once = dm.fold(log + [routing])
    assert dm.fold(log + [routing, routing.model_copy(update={"at": at(3)})]) == once  # since stays t=1
    # and a phase cannot be skipped
    assert dm.fold(log + [stamped(ev.DomainMoveFlipped(domain="acme.example", move_id="m1", target="us", epoch=7),
                                  1)]).phase == dm.Phase.REQUESTED


def test_a_copy_that_does_not_verify_is_repeated_then_reported_stuck():
    log = requested() + [stamped(e, s) for e, s in (
        (ev.DomainMoveRouting(domain="acme.example", move_id="m1", epoch=7), 0),
        (ev.DomainMoveCopying(domain="acme.example", move_id="m1", accounts=["a@acme.example"], epoch=7), 5))]
    for attempt in range(3):
        step = dm.next_step(dm.fold(log), dm.Observations(), now=at(6), epoch=7, settle=SETTLE)
        assert step == dm.CopyAccount("a@acme.example", 1, 0), attempt
        log.append(copied("a@acme.example", 1, ok=False))
    step = dm.next_step(dm.fold(log), dm.Observations(), now=at(6), epoch=7, settle=SETTLE)
    assert isinstance(step, dm.Stuck) and "a@acme.example" in step.why
    log.append(copied("a@acme.example", 1, position=12))  # an operator fixed it; the next try verifies
    step = dm.next_step(dm.fold(log), dm.Observations(), now=at(6), epoch=7, settle=SETTLE)
    assert isinstance(step, dm.Append) and isinstance(step.event, ev.DomainMoveSealing)


def test_reports_for_other_moves_or_accounts_outside_the_move_are_ignored():
    log = requested() + [
        stamped(ev.DomainMoveRouting(domain="acme.example", move_id="m1", epoch=7), 0),
        stamped(ev.DomainMoveCopying(domain="acme.example", move_id="m1", accounts=["a@acme.example"], epoch=7), 5),
        copied("late@acme.example", 1),
        copied("a@acme.example", 1).model_copy(update={"move_id": "m0"})]
    assert dm.fold(log).copies == {}


@pytest.mark.parametrize(("move", "domain", "target", "regions", "why"), [
    (None, None, "us", REGIONS, "does not exist"),
    (None, DOMAIN, "us", ("",), "one region"),
    (None, DOMAIN, "ap", REGIONS, "not one of"),
    (None, DOMAIN, "eu", REGIONS, "already homed in eu"),
    ("moving", DOMAIN, "us", REGIONS, "already moving"),
])
def test_refused_requests_say_why(move, domain, target, regions, why):
    current = dm.fold(requested()) if move else None
    with pytest.raises(dm.MoveRefused, match=why):
        dm.request_move(current, domain, "acme.example", target, regions, "m2")


def test_a_finished_move_can_be_followed_by_another_and_events_round_trip():
    log = requested()
    Driver(log).run(0, 60)
    again = dm.request_move(dm.fold(log), {**DOMAIN, "home_region": "us"}, "acme.example", "eu", REGIONS, "m2")
    assert dm.fold(log + again).move_id == "m2" and dm.fold(log + again).source == "us"
    for event in log:
        assert ev.decode(event.encode()) == event
