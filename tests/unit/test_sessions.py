"""colony.cluster.sessions.SessionTracker: what a drain counts and hands over."""

import asyncio

from colony.cluster.sessions import SessionTracker


async def test_sessions_are_counted_while_tracked():
    tracker = SessionTracker()

    async def bye():
        return None

    with tracker.track("smtp", "192.0.2.1:5000", bye):
        with tracker.track("imap", "192.0.2.2:5001", bye):
            assert tracker.active_work() == 2
            assert tracker.by_protocol() == {"smtp": 1, "imap": 1}
        assert tracker.active_work() == 1
    assert tracker.active_work() == 0
    # A protocol that had sessions reads 0 when idle (its gauge stays in /metrics).
    assert tracker.by_protocol() == {"smtp": 0, "imap": 0}


async def test_hand_over_says_goodbye_to_each_session_once_and_forgets_them():
    tracker = SessionTracker()
    said: list[str] = []
    closed = {"a": asyncio.Event(), "b": asyncio.Event()}

    def goodbye(name):
        async def bye():
            said.append(name)
            closed[name].set()
        return bye

    a = tracker.register("smtp", "peer-a", goodbye("a"))
    tracker.register("pop3", "peer-b", goodbye("b"))
    assert await tracker.hand_over(timeout=5) == 2
    assert sorted(said) == ["a", "b"]
    assert tracker.active_work() == 0
    tracker.unregister(a)  # the connection's own finally: harmless after the hand-over
    assert await tracker.hand_over(timeout=5) == 0


async def test_a_goodbye_that_fails_or_hangs_does_not_keep_the_drain_from_ending(caplog):
    tracker = SessionTracker()

    async def broken():
        raise ConnectionResetError("peer gone")

    async def hangs():
        await asyncio.Event().wait()

    tracker.register("sip", "peer-1", broken)
    tracker.register("imap", "peer-2", hangs)
    await tracker.hand_over(timeout=0.05)
    assert tracker.active_work() == 0
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "failed to say goodbye: ConnectionResetError: peer gone" in messages
    assert "did not say goodbye within" in messages


async def test_not_accepting_is_a_flag_the_listener_reads():
    tracker = SessionTracker()
    assert tracker.accepting
    tracker.accepting = False
    assert not tracker.accepting
