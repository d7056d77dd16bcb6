"""The domain move's rules and the mailbox merge together, without a bus: each region's
storage is a real journal on disk, "controllers" fold the event log and carry out the steps
the rules name with the real merge, mail keeps arriving on whichever side the phase says
(and is redelivered), users change flags in the source, and the driving controller dies
mid-copy.  What the move promises is checked at the end: every message once in the new
home, with the flags users last gave it, and nothing left in the old one."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

from colony import events as ev
from colony.storage import transfer as tr
from colony.storage.mailbox import AccountMail, read_state
from colony import domain_move as dm

SETTLE = timedelta(seconds=5)
ACCOUNTS = ("alice@acme.example", "bob@acme.example")


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


class Region:
    """One region's shared storage with the account owners' open handles."""

    def __init__(self, root) -> None:
        self.root = root
        self.open: dict[str, AccountMail] = {}

    def dir(self, address: str):
        return self.root / address

    def account(self, address: str) -> AccountMail:
        if address not in self.open:
            acct = AccountMail(self.dir(address), 1, clock=Clock())
            acct.open()
            self.open[address] = acct
        return self.open[address]

    def deliver(self, address: str, key: str, body: bytes) -> bool:
        acct = self.account(address)
        stored = acct.append("INBOX", body, key=key)
        acct.commit()
        return not stored.duplicate


class Controller:
    def __init__(self, log: list[ev.Event], epoch: int, eu: Region, us: Region) -> None:
        self.log, self.epoch, self.eu, self.us = log, epoch, eu, us

    def step(self, now: datetime) -> dm.Step:
        move = dm.fold(self.log)
        cleaned = not any(self.eu.dir(a).exists() for a in ACCOUNTS)
        step = dm.next_step(move, dm.Observations(accounts=ACCOUNTS, source_cleaned=cleaned), now=now,
                            epoch=self.epoch, settle=SETTLE)
        match step:
            case dm.Append(event):
                self.log.append(event.model_copy(update={"at": now}))
            case dm.CopyAccount(address, copy_pass, _start):
                source_dir = self.eu.dir(address)
                state = read_state(source_dir)
                target = self.us.account(address)
                report = tr.merge(target, state, lambda name: (source_dir / "bodies" / name).read_bytes())
                mine = tr.source_digest(state, lambda name: (source_dir / "bodies" / name).read_bytes())
                theirs = tr.target_digest(target, tr.source_keys(state))
                self.log.append(ev.DomainMoveAccountCopied(
                    domain="acme.example", move_id="m1", address=address, copy_pass=copy_pass,
                    source_messages=mine.messages, target_messages=theirs.messages, source_digest=mine.sha256,
                    target_digest=theirs.sha256, source_position=report.source_position, epoch=self.epoch,
                    at=now))
            case dm.CleanUpSource(accounts):
                for address in accounts:
                    acct = self.eu.open.pop(address, None)
                    if acct is not None:
                        acct.close()
                    shutil.rmtree(self.eu.dir(address), ignore_errors=True)
        return step


def test_a_move_with_mail_arriving_throughout_and_a_controller_dying_mid_copy(tmp_path):
    eu, us = Region(tmp_path / "eu"), Region(tmp_path / "us")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sent: dict[str, set[bytes]] = {a: set() for a in ACCOUNTS}
    counter = 0

    def mail(now: datetime, *, redeliver_last: bool = False) -> None:
        """A message to each account, where the edges and stores put it at this moment."""
        nonlocal counter
        move = dm.fold(log)
        settled = move.phase != dm.Phase.REQUESTED and (move.phase != dm.Phase.ROUTING or now >= move.since + SETTLE)
        if not redeliver_last:
            counter += 1
        for address in ACCOUNTS:
            body = f"message {counter} for {address}".encode()
            key = f"<{counter}@sender.example>/{address}"
            # before routing settles some stores still store in the old home
            (us if settled or (move.phase == dm.Phase.ROUTING and counter % 2) else eu).deliver(address, key, body)
            sent[address].add(body)

    log = [e.model_copy(update={"at": t0}) for e in dm.request_move(
        None, {"name": "acme.example", "home_region": "eu"}, "acme.example", "us", ("eu", "us"), "m1", "root")]
    for _ in range(3):
        mail(t0)                                       # mail from before the move
    eu.account("alice@acme.example").store_flags("INBOX", [1], ["\\Seen"], "add")
    eu.account("alice@acme.example").commit()

    first = Controller(log, 7, eu, us)
    now = t0
    assert isinstance(first.step(now), dm.Append)       # routing
    for second in (1, 2, 3):
        mail(t0 + timedelta(seconds=second))            # during routing: either side
    mail(t0 + timedelta(seconds=3), redeliver_last=True)  # a redelivery of the last job, to either side
    now = t0 + SETTLE
    assert isinstance(first.step(now), dm.Append)       # copying: accounts fixed
    assert isinstance(first.step(now), dm.CopyAccount)  # alice copied once ...
    # ... and the controller is SIGKILLed; mail keeps coming (to the new home now), users keep working.
    # A job the old home stored is redelivered to the new one: after alice's copy it is a
    # duplicate there at once; bob's is stored and later stands for his copy of it.
    for address in ACCOUNTS:
        us.deliver(address, f"<3@sender.example>/{address}", f"message 3 for {address}".encode())
    assert not us.deliver("alice@acme.example", "<3@sender.example>/alice@acme.example", b"message 3 again")
    mail(now)
    mail(now, redeliver_last=True)
    eu.account("bob@acme.example").store_flags("INBOX", [1], ["\\Flagged"], "add")
    eu.account("bob@acme.example").commit()
    eu.account("alice@acme.example").expunge("INBOX", [2])
    eu.account("alice@acme.example").commit()
    expunged_body = b"message 2 for alice@acme.example"  # UID 2: copied in pass 1, then expunged
    sent["alice@acme.example"].discard(expunged_body)

    second = Controller(log, 9, eu, us)
    while True:
        step = second.step(now)
        assert not isinstance(step, dm.Stuck), step
        if isinstance(step, dm.Finished):
            break
        if isinstance(step, dm.WaitUntil):
            now = step.when
            mail(now)
    assert dm.StandDown(9) == dm.next_step(dm.fold(log), dm.Observations(), now=now, epoch=7, settle=SETTLE)

    phases = [type(e).__name__ for e in log if not isinstance(e, ev.DomainMoveAccountCopied)]
    assert phases == ["DomainMoveRequested", "DomainMoveRouting", "DomainMoveCopying", "DomainMoveSealing",
                      "DomainMoveFlipped", "DomainMoveDone"]
    for address in ACCOUNTS:
        assert not eu.dir(address).exists()
        acct = us.account(address)
        bodies = [acct.body("INBOX", m.uid) for m in acct.messages("INBOX")]
        assert sorted(bodies) == sorted(sent[address]), address  # each exactly once, nothing lost
    alice = {us.account("alice@acme.example").body("INBOX", m.uid): m.flags
             for m in us.account("alice@acme.example").messages("INBOX")}
    bob = {us.account("bob@acme.example").body("INBOX", m.uid): m.flags
           for m in us.account("bob@acme.example").messages("INBOX")}
    assert alice[b"message 1 for alice@acme.example"] == frozenset({"\\Seen"})
    assert expunged_body not in alice
    assert "\\Flagged" in next(f for b, f in bob.items() if b.startswith(b"message 1 "))
