"""colony.cluster.sessions.ConnectionWorkload on real sockets: sessions counted, refused while
draining with the protocol's own reply, handed over with its goodbye, failures logged."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from cluster_harness import wait_until
from colony.cluster.sessions import ConnectionWorkload
from colony.metrics import Metrics
from colony.settings import Settings


class LineWorkload(ConnectionWorkload):
    """A toy line protocol: greets, echoes, says "BYE draining" when handed over."""

    role = "edge"

    async def open_listeners(self, runtime) -> dict[str, str]:
        return {"toy": await self.listen("toy", "127.0.0.1", 0, self.session,
                                         refuse=lambda w: w.write(b"421 try later\r\n"))}

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closing = asyncio.Event()

        async def goodbye() -> None:
            writer.write(b"BYE draining\r\n")
            await writer.drain()
            closing.set()

        with self.tracker.track("toy", "peer", goodbye):
            writer.write(b"220 hello\r\n")
            while not closing.is_set():
                line = asyncio.ensure_future(reader.readline())
                done = asyncio.ensure_future(closing.wait())
                await asyncio.wait({line, done}, return_when=asyncio.FIRST_COMPLETED)
                done.cancel()
                if not line.done():
                    line.cancel()
                    break
                data = line.result()
                if not data:
                    break
                if data.strip() == b"CRASH":
                    raise ValueError("handler bug")
                writer.write(b"echo " + data)


async def test_sessions_are_tracked_refused_while_draining_and_handed_over(caplog):
    metrics = Metrics(with_process=False)
    runtime = SimpleNamespace(metrics=metrics, settings=Settings())
    workload = LineWorkload()
    addresses = await workload.start(runtime)
    host, port = addresses["toy"].rsplit(":", 1)

    r1, w1 = await asyncio.open_connection(host, int(port))
    assert await r1.readline() == b"220 hello\r\n"
    await wait_until(lambda: _is(workload.active_work(), 1), 10, "one session")
    assert b'colony_sessions{protocol="toy"} 1.0' in metrics.render()
    w1.write(b"hi\r\n")
    assert await r1.readline() == b"echo hi\r\n"

    workload.set_accepting(False)
    r2, w2 = await asyncio.open_connection(host, int(port))
    assert await asyncio.wait_for(r2.read(), 10) == b"421 try later\r\n", "refused with the protocol's reply, then closed"
    assert workload.active_work() == 1

    await workload.hand_over()
    assert await asyncio.wait_for(r1.read(), 10) == b"BYE draining\r\n"
    await wait_until(lambda: _is(workload.active_work(), 0), 10, "no sessions after the hand-over")

    workload.set_accepting(True)
    r3, w3 = await asyncio.open_connection(host, int(port))
    assert await r3.readline() == b"220 hello\r\n"
    with caplog.at_level(logging.ERROR):
        w3.write(b"CRASH\r\n")
        assert await asyncio.wait_for(r3.read(), 10) == b"", "a failing handler's connection is closed"
        await wait_until(lambda: _is(workload.active_work(), 0), 10, "the crashed session gone")
    assert any("toy session from 127.0.0.1:" in r.getMessage() and "ValueError: handler bug" in r.getMessage()
               for r in caplog.records)
    assert b'colony_session_failures_total{protocol="toy"} 1.0' in metrics.render()
    await workload.stop()
    for w in (w1, w2, w3):
        w.close()


async def _is(value, expected):
    return value == expected
