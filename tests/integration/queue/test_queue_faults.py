"""The queue runner and the task owner under faults, in real processes: SIGKILL mid-job, a
task that raises, a drain that fails."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster_harness import FAST_TIMINGS, Node, wait_until
from colony.bus import names
from colony.cluster.control import ask_controller
from colony.events import decode
from colony.queue import DeadLetters

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("queue_worker.py")
COLONY = str(Path(sys.executable).with_name("colony"))
ACK_WAIT = 4.0  # progress every 1.3 s: 2.7 s of slack for a loaded machine


def start_worker(cluster, node_id: str, **env: str) -> Node:
    full = dict(os.environ)
    full.update(FAST_TIMINGS)
    full.update({"COLONY_NATS_URL": cluster.nats_url, "COLONY_NODE_ID": node_id, "COLONY_DATA_DIR": str(cluster.workdir),
                 "COLONY_QUEUE_ACK_WAIT": str(ACK_WAIT), "COLONY_QUEUE_RETRY_BACKOFF": "0.1",
                 "WORKER_DIR": str(cluster.workdir), "PYTHONPATH": os.pathsep.join(sys.path)})
    full.update(env)
    log_path = cluster.workdir / f"{node_id}.log"
    proc = subprocess.Popen([sys.executable, str(WORKER)], env=full, stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    node = Node(node_id, "worker", proc, log_path)
    cluster.nodes[node_id] = node  # the harness stops it
    return node


def lines(cluster, name: str) -> list[str]:
    path = cluster.workdir / name
    return path.read_text().splitlines() if path.exists() else []


async def _lines_where(cluster, name, predicate):
    return [line for line in lines(cluster, name) if predicate(line)]


async def test_sigkill_mid_job_redelivers_to_another_runner_which_handles_it_once(cluster):
    holder = start_worker(cluster, "worker-a", WORKER_HOLD="1")
    await cluster.wait_state("worker-a", "READY")
    nc = await cluster.client()
    js = nc.jetstream()
    await js.publish("test.jobs.one", b"job", headers={"Nats-Msg-Id": "job-1"})
    await wait_until(lambda: _lines_where(cluster, "started.log", lambda l: l.startswith("started job-1 1 ")), 30,
                     "worker-a to start job-1")

    start_worker(cluster, "worker-b")
    await cluster.wait_state("worker-b", "READY")
    # worker-a keeps the job alive with in_progress(): held well past ack_wait, it is not
    # redelivered to worker-b.
    need = int(2.5 * ACK_WAIT / 0.5)
    await wait_until(lambda: _count_at_least(cluster, "held.log", need), 60, f"worker-a to hold job-1 for {need} half-seconds")
    assert len(lines(cluster, "started.log")) == 1, "a job kept alive must not be redelivered"

    holder.process.kill()
    holder.process.wait()
    done = await wait_until(lambda: _lines_where(cluster, "done.log", lambda l: True), 60, "job-1 handled after the kill")
    assert done == [f"done job-1 {cluster.nodes['worker-b'].process.pid}"]
    started = lines(cluster, "started.log")
    assert started[1] == f"started job-1 2 {cluster.nodes['worker-b'].process.pid}", "redelivered, delivery 2"

    # More work while one runner is gone: all of it handled, each job once.
    for i in range(2, 12):
        await js.publish(f"test.jobs.{i}", b"job", headers={"Nats-Msg-Id": f"job-{i}"})
    await wait_until(lambda: _count_at_least(cluster, "done.log", 11), 60, "every job handled")
    assert sorted(l.split()[1] for l in lines(cluster, "done.log")) == sorted(f"job-{i}" for i in range(1, 12))
    assert (await js.stream_info("RESULTS")).state.messages == 11, "one durable effect per job"
    assert await wait_until(lambda: _queue_empty(js), 30, "JOBS empty: every job acked")


async def test_a_job_that_kills_its_worker_every_time_is_dead_lettered_after_max_deliver(cluster):
    """Poison of the worst kind: no handler ever reports an outcome, because each delivery
    kills its process.  After max_deliver deliveries the next runner dead-letters it unseen."""
    nc = await cluster.client()
    js = nc.jetstream()
    env = {"WORKER_CRASH": "1", "COLONY_QUEUE_MAX_DELIVER": "2", "COLONY_QUEUE_ACK_WAIT": "2"}
    for n in (1, 2):
        worker = start_worker(cluster, f"crash-{n}", **env)
        await cluster.wait_state(f"crash-{n}", "READY")
        if n == 1:
            await js.publish("test.jobs.crash", b"crashes its worker", headers={"Nats-Msg-Id": "crash-job"})
        await wait_until(lambda: _count_at_least(cluster, "started.log", n), 60, f"delivery {n} to start")
        assert await asyncio.to_thread(worker.process.wait, 30) == 3, "the job took its worker down"
    survivor = start_worker(cluster, "crash-3", **env)
    dlq = DeadLetters(js)
    (letter,) = await wait_until(lambda: dlq.list(stream="JOBS"), 60, "the crashing job dead-lettered")
    assert letter.job_id == "crash-job" and letter.deliveries == 3
    assert letter.reason.startswith("delivered 3 times without an outcome")
    assert len(lines(cluster, "started.log")) == 2, "the third delivery never reached the handler"
    assert survivor.process.poll() is None, "the runner that dead-lettered it lives on"
    assert await wait_until(lambda: _queue_empty(js), 30, "JOBS empty")


async def test_a_task_that_raises_is_logged_and_shows_in_colony_status(cluster):
    node = start_worker(cluster, "worker-f", WORKER_MODE="failing-task")
    view = await cluster.wait_state("worker-f", "READY")
    view = await wait_until(lambda: _with_faults(cluster, "worker-f"), 30, "the fault on worker-f's record")
    fault = view.faults[0]
    assert (fault.task, fault.error, fault.context) == ("import-directory", "RuntimeError: directory bucket unreachable", "at revision 7")
    assert view.fault_count == 1 and view.state == "READY"

    out = await _colony("status", "--json", "--nats", cluster.nats_url)
    assert out.returncode == 0, out.stderr
    (mine,) = [n for n in json.loads(out.stdout) if n["id"] == "worker-f"]
    assert mine["fault_count"] == 1
    assert mine["faults"][0]["task"] == "import-directory"
    assert mine["faults"][0]["error"] == "RuntimeError: directory bucket unreachable"
    table = await _colony("status", "--nats", cluster.nats_url)
    assert "import-directory" in table.stdout
    await wait_until(lambda: _in_log(node, "import-directory (at revision 7) failed"), 10, "the failure in the log")
    assert "Traceback" in node.log()

    events = await wait_until(lambda: _cluster_events(cluster, "task"), 30, "a TaskFailed event")
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://{view.addresses['ops']}/metrics")).text
    assert 'colony_task_failures_total{task="import-directory"} 1.0' in metrics
    assert [(e.node_id, e.task, e.restarting) for e in events] == [("worker-f", "import-directory", False)]


async def test_a_drain_whose_task_fails_is_reported(cluster):
    cluster.start("controller", "controller-1")
    node = start_worker(cluster, "worker-d", WORKER_MODE="failing-drain", COLONY_DRAIN_TIMEOUT="1")
    await cluster.wait_controller()
    await cluster.wait_state("worker-d", "READY")
    nc = await cluster.client()

    reply = await ask_controller(nc, "drain", "worker-d")
    assert reply.ok, reply.error
    view = await wait_until(lambda: _drain_failed(cluster, "worker-d"), 30, "worker-d to report its failed drain")
    assert view.state == "NOT_READY" and not view.drained
    assert view.drain_error == "RuntimeError: sessions would not close"
    # The task owner records the fault when the drain task's exception reaches it, a record
    # write after the one that carried drain_error.
    view = await wait_until(lambda: _with_faults(cluster, "worker-d"), 30, "worker-d to show the drain task's fault")
    assert [f.task for f in view.faults] == ["drain"]
    failed = await wait_until(lambda: _cluster_events(cluster, "drain"), 30, "a DrainFailed event")
    assert [(e.type, e.node_id, e.error) for e in failed] == [
        ("cluster.drain_failed", "worker-d", "RuntimeError: sessions would not close")]

    # The operator's `colony drain` asks again, and says so instead of waiting forever.
    out = await _colony("drain", "worker-d", "--nats", cluster.nats_url, "--timeout", "60")
    assert out.returncode == 1
    assert "worker-d could not drain: RuntimeError: sessions would not close" in out.stderr.replace("\n", " ")
    assert "drain failed" in node.log()

    reply = await ask_controller(nc, "ready", "worker-d")
    assert reply.ok, reply.error
    back = await cluster.wait_state("worker-d", "READY")
    assert back.drain_error == ""


# --- helpers -------------------------------------------------------------------------------

async def _count_at_least(cluster, name, n):
    return len(lines(cluster, name)) >= n


async def _queue_empty(js):
    return (await js.stream_info("JOBS")).state.messages == 0


async def _with_faults(cluster, node_id):
    v = (await cluster.view()).get(node_id)
    return v if v and v.faults else None


async def _drain_failed(cluster, node_id):
    v = (await cluster.view()).get(node_id)
    return v if v and v.drain_error else None


async def _in_log(node, text):
    return text in node.log()


async def _cluster_events(cluster, kind: str):
    js = (await cluster.client()).jetstream()
    sub = await js.subscribe(names.cluster_event_subject(kind), ordered_consumer=True)
    events = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:  # nothing more for now
                break
            events.append(decode(msg.data))
    finally:
        await sub.unsubscribe()
    return events


class _Out:
    def __init__(self, code, stdout, stderr):
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


async def _colony(*args: str) -> _Out:
    proc = await asyncio.create_subprocess_exec(COLONY, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "COLUMNS": "200"})
    out, errs = await asyncio.wait_for(proc.communicate(), 90)
    return _Out(proc.returncode, out.decode(), errs.decode())
