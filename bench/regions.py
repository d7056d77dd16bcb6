"""Cross-region mail against in-region mail, and provisioning replication lag between regions.

    .venv/bin/python bench/regions.py [--messages 2000] [--size 2048] [--events 300]

A hub and two regions (eu, us), each its own nats-server and JetStream domain joined as
leafnodes (``colony.regions``' layout, created by ``colony.bus.schema.ensure_schema`` with
``regions=eu,us``).  The consumer is what eu's mail stores do: a durable pull consumer of eu's
MAIL filtered to ``colony.mail.eu.*``, acking each message.  In-region: the producer publishes
into eu's MAIL; cross-region: into us's MAIL (what a us edge does for an eu-homed domain),
from where eu's MAIL sources it.  Latency is from the producer's publish to the consumer's
receipt (one clock); throughput is messages over the time from the first publish to the last
receipt.  CPU: each nats-server's (and the benchmark's own) CPU seconds during each run, from
/proc, per 1,000 messages -- on a machine where the servers share the cores, throughput
follows the total CPU a message costs, so this says where a cross-region message's extra time
goes.  Replication lag: one PROVISIONING event at a time published on the primary (eu),
timed until a consumer of us's mirror receives it.  Goals (issue #11): cross-region throughput
>= 0.9x in-region, replication lag p99 < 1 s on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "libs"))

import nats  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig  # noqa: E402

from colony.bus import names  # noqa: E402
from colony.bus.schema import ensure_schema  # noqa: E402
from colony.natsd import EmbeddedNats  # noqa: E402
from colony.settings import Settings  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of a process (this one without a pid), from /proc/<pid>/stat."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class CpuMeter:
    """CPU seconds of each named process between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids, self.before, self.used = pids, {}, {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.used


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def run_mail(js_pub, js_eu, label: str, n: int, size: int, cpu: CpuMeter | None = None) -> dict:
    durable = f"bench-{label}"
    sub = await js_eu.pull_subscribe(names.mail_region_filter("eu"), durable=durable,
                                     config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10000))
    latencies: list[float] = []
    pad = b"x" * max(0, size - 8)
    done = asyncio.Event()

    async def consume():
        while len(latencies) < n:
            try:
                msgs = await sub.fetch(200, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            now = time.perf_counter()
            for m in msgs:
                latencies.append(now - struct.unpack("d", m.data[:8])[0])
                await m.ack()
        done.set()

    task = asyncio.create_task(consume())
    if cpu:
        cpu.start()
    start = time.perf_counter()
    subject = names.mail_subject("eu", f"{label}.example")
    acks = []
    for i in range(n):
        # Nats-Msg-Id as an edge sets it: the sourcing stream drops a copy it already has.
        acks.append(js_pub.publish(subject, struct.pack("d", time.perf_counter()) + pad,
                                   headers={"Nats-Msg-Id": f"{label}-{i}"}))
        if len(acks) >= 100:  # an edge has many sessions in flight, each waiting for its ack
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    used = cpu.stop() if cpu else {}
    await task
    await sub.unsubscribe()
    await js_eu.delete_consumer(names.STREAM_MAIL, durable)  # a work queue takes one consumer per filter
    return {"label": label, "n": len(latencies), "extra": len(latencies) - n, "p50": pct(latencies, 0.5) * 1000, "p99": pct(latencies, 0.99) * 1000,
            "rate": n / elapsed, "cpu": {k: v * 1000 / n * 1000 for k, v in used.items()}}  # CPU ms per 1,000 msgs


async def run_lag(js_eu, js_us, events: int) -> list[float]:
    sub = await js_us.pull_subscribe(names.SUBJECTS_PROVISIONING, durable="bench-lag", stream=names.STREAM_PROVISIONING)
    lags = []
    for i in range(events):
        t0 = time.perf_counter()
        await js_eu.publish(names.provisioning_subject("domain", f"d{i}.example"), b"{}")
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            await msgs[0].ack()
            break
        lags.append(time.perf_counter() - t0)
    return lags


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="colony-bench-regions-"))
    leaf = _free_port()
    hub = EmbeddedNats(tmp / "hub", server_name="hub", jetstream_domain=names.HUB_JS_DOMAIN,
                       leafnode_listen=f"127.0.0.1:{leaf}", sync_always=False)
    servers = {r: EmbeddedNats(tmp / r, server_name=r, jetstream_domain=names.js_domain(r),
                               leafnode_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
                               leafnode_deny=names.REGION_LOCAL_SUBJECTS, sync_always=False) for r in ("eu", "us")}
    hub.start()
    for s in servers.values():
        s.start()
    ncs = {}
    try:
        for r, s in servers.items():
            ncs[r] = await nats.connect(s.url)
            await ensure_schema(ncs[r].jetstream(), Settings(region=r, regions="eu,us"))
        eu, us = ncs["eu"].jetstream(), ncs["us"].jetstream()
        # Warm-up, not measured: the first cross-region message after the streams are created
        # can wait for the source to (re)start once the leafnode's interest has propagated.
        await run_mail(us, eu, "warm-up", 1, args.size)
        cpu = CpuMeter({"hub": hub.process.pid, "eu": servers["eu"].process.pid, "us": servers["us"].process.pid,
                        "bench": None})
        rows = [await run_mail(eu, eu, "in-region", args.messages, args.size, cpu),
                await run_mail(us, eu, "cross-region", args.messages, args.size, cpu)]
        for row in rows:
            print(f"{row['label']:<13} {row['n']} msgs of {args.size} B: {row['rate']:8.0f} msg/s, "
                  f"latency p50 {row['p50']:7.1f} ms p99 {row['p99']:7.1f} ms, {row['extra']} extra copies")
        print(f"cross/in throughput: {rows[1]['rate'] / rows[0]['rate']:.2f}x")
        print("CPU ms per 1,000 messages:  " + "  ".join(f"{name:>6}" for name in cpu.pids) + "   total")
        for row in rows:
            print(f"  {row['label']:<24} " + "  ".join(f"{row['cpu'][name]:6.0f}" for name in cpu.pids)
                  + f"  {sum(row['cpu'].values()):6.0f}")
        total_in, total_cross = (sum(r["cpu"].values()) for r in rows)
        print(f"cross/in CPU per message: {total_cross / total_in:.2f}x")
        lags = await run_lag(eu, us, args.events)
        print(f"provisioning replication eu -> us, {len(lags)} events one at a time: "
              f"p50 {statistics.median(lags) * 1000:.1f} ms, p99 {pct(lags, 0.99) * 1000:.1f} ms, "
              f"max {max(lags) * 1000:.1f} ms")
    finally:
        for nc in ncs.values():
            await nc.close()
        for s in (*servers.values(), hub):
            s.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--events", type=int, default=300)
    asyncio.run(main(parser.parse_args()))
