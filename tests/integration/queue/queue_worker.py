"""A test instance: the real node runtime with a workload the tests control (not a product service).

``python queue_worker.py`` with COLONY_* settings and:

* ``WORKER_MODE=jobs``: a QueueRunner (durable ``workers``) on the work-queue stream ``JOBS``
  (``test.jobs.>``).  Each job writes ``started <id> <delivered> <pid>`` to
  ``$WORKER_DIR/started.log``; with ``WORKER_HOLD=1`` it then holds the job (writing a line to
  ``held.log`` every 0.5 s) until the process is killed; otherwise it does its durable effect -
  publish to ``RESULTS`` with ``Nats-Msg-Id: <job id>`` (idempotent: JetStream keeps one) - and
  writes ``done <id> <pid>`` to ``done.log``.
  With ``WORKER_CRASH=1`` a job kills its process (``os._exit``) before any effect.
* ``WORKER_MODE=failing-task``: starts an owned task that raises.
* ``WORKER_MODE=failing-drain``: always has one session, and its hand-over raises.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from nats.js.api import RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError

from colony.cluster.service_main import run_service
from colony.queue import Job, QueueMetrics, QueuePolicy, QueueRunner

MODE = os.environ.get("WORKER_MODE", "jobs")
DIR = Path(os.environ.get("WORKER_DIR", "."))
HOLD = os.environ.get("WORKER_HOLD") == "1"
CRASH = os.environ.get("WORKER_CRASH") == "1"


def note(name: str, line: str) -> None:
    with open(DIR / name, "a") as f:
        f.write(line + "\n")


class TestWorkload:
    role = "worker"

    def __init__(self, settings) -> None:
        self.settings = settings
        self.runner: QueueRunner | None = None

    async def start(self, runtime) -> dict[str, str]:
        if MODE == "failing-task":
            async def import_directory():
                raise RuntimeError("directory bucket unreachable")
            runtime.spawn("import-directory", import_directory, context=lambda: "at revision 7")
        if MODE == "jobs":
            js = runtime.nc.jetstream()
            for name, subjects, retention in (("JOBS", "test.jobs.>", RetentionPolicy.WORK_QUEUE),
                                              ("RESULTS", "test.results.>", RetentionPolicy.LIMITS)):
                try:
                    await js.add_stream(StreamConfig(name=name, subjects=[subjects], retention=retention))
                except BadRequestError:
                    pass  # the other worker made it

            async def handle(job: Job):
                note("started.log", f"started {job.id} {job.delivered} {os.getpid()}")
                if CRASH:
                    os._exit(3)  # a job that takes its worker down, every time
                if HOLD:
                    while True:
                        note("held.log", f"held {job.id} {os.getpid()}")
                        await asyncio.sleep(0.5)
                await js.publish("test.results.done", str(os.getpid()).encode(), headers={"Nats-Msg-Id": job.id})
                note("done.log", f"done {job.id} {os.getpid()}")

            self.runner = QueueRunner(runtime.nc, stream="JOBS", durable="workers", filter_subject="test.jobs.>",
                                      handler=handle, policy=QueuePolicy.from_settings(self.settings),
                                      metrics=runtime.metrics.once(QueueMetrics), name="jobs")
            await self.runner.start(runtime.spawn)
        return {}

    def set_accepting(self, accepting: bool) -> None:
        if self.runner:
            self.runner.set_accepting(accepting)

    def active_work(self) -> int:
        if MODE == "failing-drain":
            return 1
        return self.runner.active_work() if self.runner else 0

    async def hand_over(self) -> None:
        if MODE == "failing-drain":
            raise RuntimeError("sessions would not close")

    async def stop(self) -> None:
        if self.runner:
            await self.runner.stop(timeout=1)


if __name__ == "__main__":
    run_service("worker", TestWorkload)
