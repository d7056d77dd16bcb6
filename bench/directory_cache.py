"""Directory cache benchmark: cold start, memory per account and lookups/s of ``DirectoryCache``.

    .venv/bin/python bench/directory_cache.py                    # 1,000,000 accounts
    .venv/bin/python bench/directory_cache.py --accounts 100000  # quick

What it runs: a real nats-server (embedded, in a temporary directory).  A child process
fills the ``directory`` bucket directly (not through the admin API: this measures the edge's
cache, not provisioning) with ``--accounts`` account entries shaped as the admin API's
directory projection writes them, spread over domains of ``--per-domain`` accounts, plus
one class of service and a few aliases.  Then this process (which has held nothing else)
starts a ``DirectoryCache`` and measures:

- cold start: from ``start()`` to ``loaded`` (every entry in the cache, addresses still as
  their JSON), and until the background compaction has parsed them all;
- memory per account: the process's resident set (after a GC) minus before, divided by the
  number of accounts, when loaded and when compacted;
- lookups/s: ``cache.address(a)`` (the raw lookup) and ``cache.resolve(a)`` (the full
  recipient resolution an edge does for ``RCPT TO``), random existing addresses, one core;
- follow latency: from a write to the bucket until the cache shows it (median of 50).

Goals (issue #6): <= 1 KB per account, >= 200k lookups/s, cold start <= 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import orjson

from colony.bus import names
from colony.bus.schema import ensure_schema
from colony.contracts.cache import DirectoryCache
from colony.natsd import EmbeddedNats
from colony.settings import Settings


def address(i: int, per_domain: int) -> str:
    return f"user{i:07d}@{domain(i // per_domain)}"


def domain(d: int) -> str:
    return f"d{d:06d}.bench.example"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def fill(url: str, accounts: int, per_domain: int, window: int = 20_000) -> None:
    """Publish every entry with a reply inbox and count the stream's acks (pipelined)."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    acked = 0
    errors = 0
    done = asyncio.Event()
    progress = asyncio.Condition()
    inbox = nc.new_inbox()

    async def on_ack(msg) -> None:
        nonlocal acked, errors
        acked += 1
        if b'"error"' in msg.data:
            errors += 1
        if acked % 1000 == 0 or acked == total:
            async with progress:
                progress.notify_all()
        if acked == total:
            done.set()

    entries: list[tuple[str, bytes]] = [
        (names.directory_key(names.AGG_COS, "standard"),
         orjson.dumps({"kind": "cos", "name": "standard", "description": "", "seq": 1,
                       "limits": {"services": ["mail", "imap", "pop", "sip"], "quota_bytes": 10 * 2**30,
                                  "max_message_bytes": 50 * 2**20, "max_recipients_per_message": 100,
                                  "sending_rate_per_hour": 500}}))]
    n_domains = (accounts + per_domain - 1) // per_domain
    for d in range(n_domains):
        name = domain(d)
        entries.append((names.directory_key(names.AGG_DOMAIN, name), orjson.dumps(
            {"kind": "domain", "name": name, "state": "active", "home_region": "local", "cos": "standard",
             "branding": {"display_name": "", "logo_url": "", "primary_colour": None, "secondary_colour": None,
                          "login_text": ""},
             "storage": {"account_foldering": "1-1", "domain_foldering": False, "fast_storage_index": None},
             "seq": d + 2})))
    total = len(entries) + accounts
    sub = await nc.subscribe(inbox, cb=on_ack)

    async def publish(key: str, value: bytes) -> None:
        await nc.publish(f"$KV.{names.BUCKET_DIRECTORY}.{key}", value, reply=inbox)

    sent = 0

    async def throttle() -> None:
        if sent - acked > window:
            async with progress:
                await progress.wait_for(lambda: sent - acked <= window // 2)

    for key, value in entries:
        await publish(key, value)
        sent += 1
    for i in range(accounts):
        a = address(i, per_domain)
        local, _, dom = a.partition("@")
        value = (b'{"kind":"account","address":"%s","domain":"%s","name":"%s","real_name":"Bench User %d",'
                 b'"cos":null,"quota_bytes":null,"services":null,"forwarding":[],"state":"active","seq":%d}'
                 % (a.encode(), dom.encode(), local.encode(), i, n_domains + 2 + i))
        await publish(names.directory_key(names.AGG_ADDRESS, a), value)
        sent += 1
        if sent % 1000 == 0:
            await throttle()
    await nc.flush()
    await asyncio.wait_for(done.wait(), 600)
    await sub.unsubscribe()
    await nc.close()
    if errors:
        raise SystemExit(f"{errors} publishes were refused by JetStream")


async def measure(url: str, accounts: int, per_domain: int, lookups: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    gc.collect()
    before = rss_bytes()
    cache = DirectoryCache(nc)
    t0, cpu0 = time.perf_counter(), time.process_time()
    await cache.start()
    await cache.wait_loaded(timeout=600)
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    loaded_len = len(cache)
    gc.collect()
    at_load = rss_bytes()
    while cache.uncompacted:  # the cold start keeps JSON; the cache parses it in the background
        await asyncio.sleep(0.05)
    compacted = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    if loaded_len != accounts:
        raise SystemExit(f"cache holds {loaded_len:,} addresses, expected {accounts:,}")

    rng = random.Random(7)
    sample = [address(rng.randrange(accounts), per_domain) for _ in range(min(lookups, 200_000))]
    reps = max(1, lookups // len(sample))
    lookup = cache.address
    t = time.perf_counter()
    for _ in range(reps):
        for a in sample:
            lookup(a)
    raw_rate = reps * len(sample) / (time.perf_counter() - t)
    resolve = cache.resolve
    t = time.perf_counter()
    for _ in range(reps):
        for a in sample:
            resolve(a)
    resolve_rate = reps * len(sample) / (time.perf_counter() - t)
    assert resolve(sample[0]).ok

    # follow latency: change one account and wait for the cache to show it
    kv = await js.key_value(names.BUCKET_DIRECTORY)
    lags = []
    for n in range(50):
        a = address(rng.randrange(accounts), per_domain)
        state = "disabled" if n % 2 == 0 else "active"
        value = orjson.dumps({"kind": "account", "address": a, "domain": a.partition("@")[2],
                              "name": a.partition("@")[0], "forwarding": [], "state": state, "seq": 10**9 + n})
        t = time.perf_counter()
        await kv.put(names.directory_key(names.AGG_ADDRESS, a), value)
        while cache.address(a).state != state:
            await asyncio.sleep(0.0005)
        lags.append(time.perf_counter() - t)
    await cache.stop()
    await nc.close()
    return {"cold": cold, "cold_cpu": cold_cpu, "load": os.getloadavg()[0], "compacted": compacted, "per_account_loaded": (at_load - before) / accounts,
            "per_account": (after - before) / accounts, "rss_mb": after / 2**20,
            "raw_rate": raw_rate, "resolve_rate": resolve_rate, "lag_ms": statistics.median(lags) * 1000,
            "lag_max_ms": max(lags) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1_000_000)
    p.add_argument("--per-domain", type=int, default=1000, help="accounts per domain")
    p.add_argument("--lookups", type=int, default=1_000_000, help="lookups per rate measurement")
    p.add_argument("--fill", metavar="NATS_URL", help=argparse.SUPPRESS)  # the child's job
    args = p.parse_args()
    if args.fill:
        asyncio.run(fill(args.fill, args.accounts, args.per_domain))
        return

    tmp = Path(tempfile.mkdtemp(prefix="colony-bench-dir-"))
    srv = EmbeddedNats(store_dir=tmp / "nats", sync_always=False)
    url = srv.start()
    try:
        async def schema() -> None:
            nc = await nats.connect(url)
            await ensure_schema(nc.jetstream(), Settings(nats_url=url))
            await nc.close()
        asyncio.run(schema())
        t = time.perf_counter()
        # A child fills the bucket, so nothing it allocated is in this process's memory.
        subprocess.run([sys.executable, __file__, "--fill", url, "--accounts", str(args.accounts),
                        "--per-domain", str(args.per_domain)], check=True)
        fill_s = time.perf_counter() - t
        print(f"filled the directory bucket with {args.accounts:,} accounts in {fill_s:.1f} s "
              f"({args.accounts / fill_s:,.0f}/s)")
        r = asyncio.run(measure(url, args.accounts, args.per_domain, args.lookups))
    finally:
        srv.stop()
    goal = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    print(f"accounts in the directory : {args.accounts:,} ({args.per_domain} per domain)")
    print(f"cold start                : {r['cold']:.1f} s ({args.accounts / r['cold']:,.0f} entries/s)  "
          f"goal <= 30 s: {goal(r['cold'] <= 30)}; {r['cold_cpu']:.1f} s of this process's CPU")
    print(f"compacted (all parsed)    : {r['compacted']:.1f} s after start")
    worst = max(r["per_account"], r["per_account_loaded"])
    print(f"memory per account        : {r['per_account_loaded']:,.0f} bytes when loaded, {r['per_account']:,.0f} "
          f"compacted (RSS {r['rss_mb']:,.0f} MB)  goal <= 1024: {goal(worst <= 1024)}")
    print(f"lookups (address)         : {r['raw_rate']:,.0f}/s  goal >= 200,000: {goal(r['raw_rate'] >= 200_000)}")
    print(f"lookups (full resolve)    : {r['resolve_rate']:,.0f}/s")
    print(f"follow latency            : median {r['lag_ms']:.1f} ms, max {r['lag_max_ms']:.1f} ms")
    print(f"machine                   : {os.cpu_count()} cores, load average {r['load']:.1f} at the end, "
          f"Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
