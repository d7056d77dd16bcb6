"""The projection's pipeline (``runner.StreamProjection._apply_batch``) without a bus: two batches
in hand at once, transactions in stream order in the projection's thread, and no position
(announced or the directory's) moving past a batch before every batch ahead of it is done."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import create_engine

from colony import events as ev
from colony_admin.projections.runner import StreamProjection, _Chain


class FakeDirectory:
    """The directory's side, recording what it was asked, in order."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.advanced: list[int] = []

    async def write(self, items, opened) -> None:
        self.written.append(items[-1][0])

    async def advance(self, last: int) -> None:
        self.advanced.append(last)


def _items(first: int, last: int):
    return [(seq, f"colony.prov.domain.d{seq}", ev.DomainDeleted(domain=f"d{seq}.example"))
            for seq in range(first, last + 1)]


def _projection(apply, directory=None) -> StreamProjection:
    return StreamProjection(nc=None, js=None, engine=create_engine("sqlite://"), stream="S", subjects="s.>",
                            name="readmodel", apply=apply, directory=directory)


async def _wait(condition, what: str) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0)  # yield to the loop: no sleeping on a clock
    assert condition(), what


async def test_a_batch_moves_no_position_before_the_one_ahead_of_it_and_transactions_keep_their_order():
    release_first = threading.Event()
    applied: list[int] = []

    def apply(conn, batch) -> int:
        if batch[0][0] == 1:
            assert release_first.wait(10)
        applied.append(batch[-1][0])
        return len(batch)

    directory = FakeDirectory()
    p = _projection(apply, directory)
    chain = _Chain()
    first = asyncio.create_task(p._apply_batch(_items(1, 3), set(), 3, None, chain, []))
    second = asyncio.create_task(p._apply_batch(_items(4, 6), set(), 6, first, chain, []))
    # the second batch's directory writes go out while the first is still committing ...
    await _wait(lambda: directory.written == [3, 6], "both batches' directory writes")
    assert p.in_flight == 6 and applied == []
    # ... but neither position moves while the first transaction is open
    assert p.position == 0 and directory.advanced == []
    release_first.set()
    await asyncio.gather(first, second)
    assert applied == [3, 6], "transactions in stream order"
    assert directory.advanced == [3, 6] and p.position == 6 and p.in_flight == 0


async def test_a_failed_batch_stops_the_ones_behind_it():
    applied: list[int] = []

    def apply(conn, batch) -> int:
        if batch[0][0] == 1:
            raise ConnectionError("database unreachable")  # transient: not skipped as bad data
        applied.append(batch[-1][0])
        return len(batch)

    directory = FakeDirectory()
    p = _projection(apply, directory)
    chain = _Chain()
    first = asyncio.create_task(p._apply_batch(_items(1, 3), set(), 3, None, chain, []))
    second = asyncio.create_task(p._apply_batch(_items(4, 6), set(), 6, first, chain, []))
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert applied == [], "the transaction queued behind a failed one must not jump the gap"
    assert directory.advanced == [] and p.position == 0 and p.in_flight == 0


def test_a_broken_chain_refuses_what_is_queued_behind():
    chain = _Chain()
    with pytest.raises(ZeroDivisionError):
        chain.run(lambda batch: 1 / 0, [])
    with pytest.raises(RuntimeError):
        chain.run(lambda batch: None, [])


async def test_an_event_the_database_cannot_store_is_skipped_not_retried_for_ever(tmp_path):
    """SQLite's driver refuses an integer beyond 64 bits with OverflowError: that event is
    bad data, skipped past, not a transient failure the projection retries without end."""
    from colony_admin import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'rm.sqlite3'}")
    db.migrate(engine)
    applied: list[int] = []

    def apply(conn, batch) -> int:
        if any(item[0] == 2 for item in batch):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        applied.extend(item[0] for item in batch)
        return len(batch)

    p = StreamProjection(nc=None, js=None, engine=engine, stream="S", subjects="s.>", name="readmodel", apply=apply)
    await p._apply_batch(_items(1, 3), set(), 3, None, _Chain(), [])
    assert applied == [1, 3] and p.position == 3


async def test_a_skipped_event_is_counted_not_only_logged(tmp_path):
    """An event skipped is an object the read model lacks until a rebuild; an error log line
    was all that said so, and no alert reads logs."""
    from prometheus_client import CollectorRegistry

    from colony_admin import db
    from colony_admin.projections.runner import ProjectionMetrics

    engine = db.make_engine(f"sqlite:///{tmp_path / 'rm.sqlite3'}")
    db.migrate(engine)

    def apply(conn, batch) -> int:
        if any(item[0] in (2, 5) for item in batch):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return len(batch)

    registry = CollectorRegistry()
    p = StreamProjection(nc=None, js=None, engine=engine, stream="S", subjects="s.>", name="readmodel", apply=apply,
                         metrics=ProjectionMetrics(registry))
    assert registry.get_sample_value("colony_projection_skipped_events_total", {"projection": "readmodel"}) == 0
    await p._apply_batch(_items(1, 6), set(), 6, None, _Chain(), [])
    assert p.position == 6
    assert registry.get_sample_value("colony_projection_skipped_events_total", {"projection": "readmodel"}) == 2
