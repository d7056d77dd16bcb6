"""Shared rate counters: counted events per second and bus writes, exact vs batched.

    .venv/bin/python bench/rate_counters.py                 # 5,000 hits, 50 subjects
    .venv/bin/python bench/rate_counters.py --hits 20000 --subjects 500

What it runs: a real nats-server (embedded, ``sync_interval: always`` as deployed, in a
temporary directory) with Colony's schema, and one ``SharedCounters`` per mode
(``flush_interval`` 0 = exact, and the default) counting ``--hits`` events spread round-robin
over ``--subjects`` client addresses, ``--concurrency`` at a time (as an edge's sessions
do).  Reported per mode: hits/s, and the bus writes they cost (the ``rate_counters``
stream's sequence before and after, after ``stop`` flushed what was pending).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats

from colony.bus import names
from colony.bus.schema import ensure_schema
from colony.counters import SharedCounters
from colony.natsd import EmbeddedNats
from colony.settings import Settings


async def run(url: str, interval: float, hits: int, subjects: int, concurrency: int) -> tuple[float, int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = f"KV_{names.BUCKET_RATE_COUNTERS}"
    before = (await js.stream_info(stream)).state.last_seq
    counters = SharedCounters(js, f"bench-{interval}", flush_interval=interval)
    await counters.start()
    queue = iter(range(hits))

    async def worker() -> None:
        for i in queue:
            await counters.hit("bench", f"192.0.2.{i % subjects}" if subjects <= 256 else f"10.{i % subjects}")

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t
    await counters.stop()
    writes = (await js.stream_info(stream)).state.last_seq - before
    await nc.close()
    return hits / elapsed, writes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=5000)
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    default = Settings().rate_counter_flush_interval
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedNats(store_dir=Path(tmp) / "nats", sync_always=True)
        url = srv.start()
        try:
            async def schema() -> None:
                nc = await nats.connect(url)
                await ensure_schema(nc.jetstream(), Settings(nats_url=url))
                await nc.close()
            asyncio.run(schema())
            for interval in (0.0, default):
                rate, writes = asyncio.run(run(url, interval, args.hits, args.subjects, args.concurrency))
                print(f"flush_interval {interval:>4} s: {rate:9.0f} hits/s, {writes:6d} bus writes "
                      f"for {args.hits} hits over {args.subjects} subjects")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
