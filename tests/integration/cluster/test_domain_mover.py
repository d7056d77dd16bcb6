"""The controller's domain-move driver on a real, authenticated bus: it reads and appends as
the controller role, resumes from the last event after its predecessor died mid-copy, an
older controller stands down, and a copy that never verifies leaves the move stuck naming
the account.  Storage is two regions' real journals on disk, merged by colony.storage.transfer
(the port over the stores' inner connection is not built; this port stands for it)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import nats

from colony import domain_move as dm
from colony import events as ev
from colony.bus import names
from colony.eventstore import EventStore
from colony.storage import transfer as tr
from colony.storage.mailbox import AccountMail, read_state
from colony_controller.domain_mover import CopyReport, DomainMover

SETTLE = timedelta(seconds=5)
DOMAIN = "acme.example"
ACCOUNTS = ["alice@acme.example", "bob@acme.example"]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class DiskRegions:
    """The MovePort over two regions' storage directories."""

    def __init__(self, root, *, corrupt: bool = False) -> None:
        self.eu, self.us = root / "eu", root / "us"
        self.corrupt = corrupt
        self.copies: list[tuple[str, int, int]] = []
        self._open: dict[str, AccountMail] = {}

    def account(self, region, address: str) -> AccountMail:
        key = f"{region.name}/{address}"
        if key not in self._open:
            acct = AccountMail(region / address, 1)
            acct.open()
            self._open[key] = acct
        return self._open[key]

    def deliver(self, region, address: str, key: str, body: bytes) -> None:
        acct = self.account(region, address)
        acct.append("INBOX", body, key=key)
        acct.commit()

    async def accounts(self, domain: str) -> list[str]:
        return list(ACCOUNTS)

    async def copy_account(self, move, address, copy_pass, from_position) -> CopyReport:
        self.copies.append((address, copy_pass, from_position))
        source_dir = self.eu / address
        state = read_state(source_dir)
        target = self.account(self.us, address)
        report = tr.merge(target, state, lambda name: (source_dir / "bodies" / name).read_bytes())
        mine = tr.source_digest(state, lambda name: (source_dir / "bodies" / name).read_bytes())
        theirs = tr.target_digest(target, tr.source_keys(state))
        return CopyReport(mine.messages, theirs.messages, mine.sha256, "bad" if self.corrupt else theirs.sha256,
                          report.source_position)

    async def source_sessions(self, move) -> int:
        return 0

    async def source_cleaned(self, move) -> bool:
        return not any((self.eu / a).exists() for a in ACCOUNTS)

    async def clean_up_source(self, move, accounts) -> None:
        for address in accounts:
            acct = self._open.pop(f"eu/{address}", None)
            if acct is not None:
                acct.close()
            shutil.rmtree(self.eu / address, ignore_errors=True)

    def bodies(self, region, address: str) -> list[bytes]:
        acct = self.account(region, address)
        return sorted(acct.body("INBOX", m.uid) for m in acct.messages("INBOX"))


async def _request(operator_js, move_id: str = "m1") -> None:
    store = EventStore(operator_js, names.STREAM_PROVISIONING)
    subject = names.provisioning_subject(names.AGG_DOMAIN, DOMAIN)
    await store.append(subject, [ev.DomainCreated(domain=DOMAIN, home_region="eu").encode()], 0)
    requested = dm.request_move(None, {"home_region": "eu"}, DOMAIN, "us", ["eu", "us"], move_id, "root")
    await store.append(subject, [e.encode() for e in requested], (await store.read(subject))[-1].seq)


async def _phases(store: EventStore) -> list[str]:
    return [ev.decode(s.data).type.removeprefix("prov.domain_move_")
            for s in await store.read(names.provisioning_subject(names.AGG_DOMAIN, DOMAIN))][1:]


async def test_a_new_controller_finishes_a_move_its_predecessor_left_mid_copy(nats_server, js, tmp_path):
    regions = DiskRegions(tmp_path)
    for i in range(3):
        for address in ACCOUNTS:
            regions.deliver(regions.eu, address, f"<{i}@x>/{address}", f"before {i} {address}".encode())
    await _request(js)
    controller = await nats.connect(nats_server.url, **nats_server.client_options("controller"))
    try:
        store = EventStore(controller.jetstream(), names.STREAM_PROVISIONING)
        clock = Clock()
        first = DomainMover(store, regions, epoch=lambda: 7, settle=SETTLE, clock=clock)
        assert isinstance(await first.step(DOMAIN), dm.Append)              # routing
        assert isinstance(await first.step(DOMAIN), dm.WaitUntil)           # routing settles first
        clock.now += SETTLE
        assert isinstance(await first.step(DOMAIN), dm.Append)              # copying: accounts fixed
        assert isinstance(await first.step(DOMAIN), dm.CopyAccount)         # alice, pass 1 ... then it dies
        # the users keep working in eu; mail now reaches us (routed)
        regions.deliver(regions.eu, "bob@acme.example", "<late@x>/bob@acme.example", b"late for bob")
        for address in ACCOUNTS:
            regions.deliver(regions.us, address, f"<routed@x>/{address}", f"routed {address}".encode())

        second = DomainMover(store, regions, epoch=lambda: 9, settle=SETTLE, clock=clock)

        async def sleep(seconds: float) -> None:
            clock.now += timedelta(seconds=max(seconds, 0.001))

        assert isinstance(await second.drive(DOMAIN, sleep=sleep), dm.Finished)
        assert await _phases(store) == ["requested", "routing", "copying", "sealing", "flipped", "done"]
        # pass 1 of alice was not repeated; pass 2 started where pass 1 got to
        assert [c[:2] for c in regions.copies] == [(ACCOUNTS[0], 1), (ACCOUNTS[1], 1), (ACCOUNTS[0], 2),
                                                   (ACCOUNTS[1], 2)]
        assert all(start > 0 for _, copy_pass, start in regions.copies if copy_pass == 2)
        for address in ACCOUNTS:
            expected = sorted([f"before {i} {address}".encode() for i in range(3)] + [f"routed {address}".encode()]
                              + ([b"late for bob"] if address.startswith("bob") else []))
            assert regions.bodies(regions.us, address) == expected      # each once
            assert not (regions.eu / address).exists()                      # the old home's copy is gone
        move = dm.fold(ev.decode(s.data) for s in sorted(
            [*await store.read(names.provisioning_subject(names.AGG_DOMAIN, DOMAIN)),
             *await store.read(names.provisioning_subject(names.AGG_DOMAIN_MOVE, DOMAIN))], key=lambda s: s.seq))
        assert move.phase == dm.Phase.DONE and move.epoch == 9
        # the dead controller, back with its old epoch, stands down and appends nothing
        before = (await js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
        assert isinstance(await first.step(DOMAIN), dm.StandDown)
        assert (await js.stream_info(names.STREAM_PROVISIONING)).state.last_seq == before
    finally:
        await controller.close()


async def test_a_copy_that_never_verifies_leaves_the_move_stuck_naming_the_account(nats_server, js, tmp_path):
    regions = DiskRegions(tmp_path, corrupt=True)
    for address in ACCOUNTS:
        regions.deliver(regions.eu, address, f"<1@x>/{address}", b"one")
    await _request(js)
    controller = await nats.connect(nats_server.url, **nats_server.client_options("controller"))
    try:
        store = EventStore(controller.jetstream(), names.STREAM_PROVISIONING)
        clock = Clock()
        mover = DomainMover(store, regions, epoch=lambda: 3, settle=SETTLE, clock=clock)

        async def sleep(seconds: float) -> None:
            clock.now += timedelta(seconds=max(seconds, 0.001))

        stuck = await mover.drive(DOMAIN, sleep=sleep)
        assert isinstance(stuck, dm.Stuck) and ACCOUNTS[0] in stuck.why
        assert regions.copies == [(ACCOUNTS[0], 1, 0)] * 3                  # three attempts, then it stops
        assert (await _phases(store))[-1] == "copying"                       # nothing paused, nothing flipped
        assert (regions.eu / ACCOUNTS[0]).exists()
    finally:
        await controller.close()
