"""The auth service under a burst of PLAIN checks (a password spray, or many clients retrying
at once): how long a fresh check waits after the burst, and how many argon2 hashes the burst
cost, with load shedding and without.

    .venv/bin/python bench/auth_spray.py [--burst 200] [--timeout 5]

Runs ``colony_admin.authservice.AuthService`` in this process with real argon2id (library
defaults, on the admin API's argon2 thread pool) and the bus replaced by in-process messages
(a reply the requester no longer waits for is counted, not sent).  The account lookup is a
stub: only the hashing and the service's queueing are measured.  Two runs:

* ``no shedding``: every check queued and hashed, whenever it gets its turn (the service as
  it was: requests carried no deadline, the queue had no bound);
* ``shedding``: requests carry ``Colony-Timeout``, the queue holds ``max_queued_checks``
  (64, the default).

Each run sends ``--burst`` checks at once, each waiting ``--timeout`` s for its answer, then,
once they have all given up, one fresh check, and reports the fresh check's wait, the
burst's answers by kind (a reply after the requester's wait counts as "late": the bus
refuses it) and the hashes computed in all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from argon2 import PasswordHasher

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "services" / "admin-api"), str(ROOT / "libs")]

from colony.bus import names  # noqa: E402
from colony.contracts.auth import TIMEOUT_HEADER, AuthCheckRequest  # noqa: E402
from colony_admin.auth import passwords  # noqa: E402
from colony_admin.auth.throttle import Throttle  # noqa: E402
from colony_admin.authservice import AuthService  # noqa: E402
from colony_admin.commands import ARGON2_THREADS  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

HASHER = PasswordHasher()
STORED = HASHER.hash("wonderland")


class Provisioning:
    """The admin API's argon2 pool and nothing else."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=ARGON2_THREADS, thread_name_prefix="argon2")
        self.hashes = 0

    async def check_password(self, stored, password):
        self.hashes += 1
        return await asyncio.get_running_loop().run_in_executor(self.pool, passwords.verify, HASHER, stored, password)


class Service(AuthService):
    async def _lookup(self, address):
        return {"account": {"address": address, "domain": address.rpartition("@")[2], "state": "active",
                            "password_hash": STORED}, "domain_state": "active", "limits": None}

    async def _credential(self, acct, field, algorithm=None):
        return acct[field]


class Msg:
    """One request as the subscription callback gets it; its requester waits ``timeout``."""

    def __init__(self, password: str, timeout: float, header: bool) -> None:
        self.subject, self.reply = names.AUTH_CHECK, "_INBOX.x"
        self.data = AuthCheckRequest(user="alice@acme.example", password=password).to_bytes()
        # without shedding the service does not learn that the requester stops waiting
        self.headers = {TIMEOUT_HEADER: f"{timeout if header else 3600:g}"}
        self.until = time.monotonic() + timeout
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self.late = False

    async def respond(self, data: bytes) -> None:
        if time.monotonic() > self.until:
            self.late = True   # the bus would refuse it: the requester's inbox is gone
        elif not self.answer.done():
            self.answer.set_result(data)


async def run(shedding: bool, burst: int, timeout: float) -> dict:
    provisioning = Provisioning()
    svc = Service(None, provisioning, None, Throttle(max_failures=10**9),
                  max_queued_checks=64 if shedding else 10**9)
    cb = svc._spawn(AuthCheckRequest, svc.check, lambda e: None)
    msgs = [Msg(f"guess{i}", timeout, shedding) for i in range(burst)]
    for m in msgs:
        await cb(m)
    await asyncio.sleep(timeout)   # every requester of the burst has given up by now
    fresh = Msg("wonderland", 3600, shedding)
    started = time.monotonic()
    await cb(fresh)
    fresh_ok = b'"ok":true' in await fresh.answer
    waited = time.monotonic() - started
    answered = {"in time": 0, "shed": 0, "no answer": 0}
    for m in msgs:
        if m.answer.done():
            answered["shed" if b"temporarily" in m.answer.result() else "in time"] += 1
        else:
            answered["no answer"] += 1
    await asyncio.gather(*svc._tasks, return_exceptions=True)
    late = sum(m.late for m in msgs)
    provisioning.pool.shutdown()
    return {"fresh check waited": f"{waited:.2f} s", "fresh ok": fresh_ok, **answered, "late replies": late,
            "hashes": provisioning.hashes}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    print(f"cpus {os.cpu_count()}, argon2 threads {ARGON2_THREADS}, load {os.getloadavg()[0]:.1f}")
    for shedding in (False, True):
        print("shedding" if shedding else "no shedding", await run(shedding, args.burst, args.timeout))
    print(f"load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
