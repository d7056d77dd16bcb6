"""Projections resume from their checkpoint (after a restart, after SIGKILL mid-import) and skip
what they cannot understand."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid

import orjson
import pytest
from cluster_harness import ANY_PORT, FAST_TIMINGS
from admin_stack import unique_domain, wait_until
from nats.js.errors import KeyNotFoundError

from colony import events as ev
from colony.bus import names
from colony.contracts.directory import POSITION_KEY
from colony_admin import aggregates
from colony_admin.projections.directory import subject_entry
from colony_admin.projections.readmodel import READ_MODEL, checkpoint, dump_provisioning


async def test_a_restarted_instance_resumes_from_its_checkpoint(make_stack, databases):
    url = databases.new()
    first = await make_stack(url)
    h = first.as_(first.sys_token)
    d1, d2 = unique_domain("before"), unique_domain("after")
    await first.client.post("/v1/domains", json={"name": d1}, headers=h)
    other = await make_stack()  # writes while "first"'s successor is not running yet
    await other.client.post("/v1/domains", json={"name": d2}, headers=h)
    # a second instance on the first one's database starts where that database left off
    successor = await make_stack(url)
    for d in (d1, d2):
        assert (await successor.client.get("/v1/domains", params={"prefix": d}, headers=h)).json()["items"]
    last = (await successor.ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    assert await successor.ctx.readmodel.wait_for(last, timeout=30)
    seq = await successor.ctx.db(checkpoint, READ_MODEL)
    assert seq == last


async def test_an_event_of_an_unknown_version_is_skipped_not_guessed(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    future = json.dumps({"type": "prov.domain_created", "v": 99, "domain": "from-the-future.example"}).encode()
    ack = await stack.nc.jetstream().publish(names.provisioning_subject(names.AGG_DOMAIN, "from-the-future.example"),
                                             future)
    d = unique_domain("later")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201  # projection still runs
    assert await stack.ctx.readmodel.wait_for(ack.seq, timeout=30)
    listed = (await c.get("/v1/domains", params={"prefix": "from-the-future"}, headers=h)).json()["items"]
    assert listed == []
    r = await c.get("/v1/domains/from-the-future.example", headers=h)
    assert r.status_code == 500 and r.json()["type"].endswith("unknown-event-version")

    # the directory stays alive too: a later domain still reaches it
    async def in_directory() -> bool:
        kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
        try:
            await kv.get(names.directory_key("domain", d))
            return True
        except Exception:
            return False

    await wait_until(in_directory, what="the later domain in the directory")


async def test_an_event_the_database_refuses_is_skipped_and_the_rest_applied(stack):
    from colony import events as ev

    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("poison")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "pat", "real_name": "Pat"}, headers=h)
    # an event the API would never write (real_name is NOT NULL), appended behind its back
    bad = ev.AccountUpdated(address=f"pat@{d}", changes={"real_name": None})
    subject = names.provisioning_subject(names.AGG_ADDRESS, f"pat@{d}")
    await stack.ctx.store.append(subject, [bad.encode()], await stack.ctx.store.version(subject))
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "quinn"}, headers=h)
    assert r.status_code == 201
    assert await stack.ctx.readmodel.wait_for(r.json()["version"], timeout=30)
    names_listed = [a["name"] for a in (await c.get(f"/v1/domains/{d}/accounts", headers=h)).json()["items"]]
    assert names_listed == ["pat", "quinn"]
    # and a null sent through the API for a field that cannot be empty changes nothing
    r = await c.patch(f"/v1/domains/{d}/accounts/quinn", json={"real_name": None, "state": None}, headers=h)
    assert r.status_code == 200 and r.json()["real_name"] == ""


IMPORT_DOMAINS, IMPORT_ACCOUNTS = 1000, 2  # 4,000 events: several batches, two in flight


def _start_projector(nats_url: str, database_url: str, workdir, node_id: str) -> subprocess.Popen:
    """A projector instance as `colony up` runs it: its own process, the projector's bus identity."""
    from colony.bus.permissions import SEED_SUFFIX
    from colony.settings import Settings

    env = dict(os.environ, **FAST_TIMINGS, **ANY_PORT, COLONY_NATS_URL=nats_url, COLONY_DATABASE_URL=database_url,
               COLONY_DATA_DIR=str(workdir), COLONY_NODE_ID=node_id)
    operator = Settings().nats_nkey_seed_file
    if operator is not None:
        env["COLONY_NATS_NKEY_SEED_FILE"] = str(operator.with_name(f"projector{SEED_SUFFIX}"))
    log = open(workdir / f"{node_id}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "colony_admin.projector"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def _stream_events(nc, first: int, last: int) -> dict[str, list[tuple[int, bytes]]]:
    """PROVISIONING's events ``first..last``, by subject, in stream order."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from colony_admin.projections.pull import PullBatches, stream_seq

    js = nc.jetstream()
    info = await js.add_consumer(names.STREAM_PROVISIONING, config=ConsumerConfig(
        filter_subject=names.SUBJECTS_PROVISIONING, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=first, inactive_threshold=30.0, max_waiting=1))
    pull = PullBatches(nc, js, names.STREAM_PROVISIONING, info.name, 1000)
    by_subject: dict[str, list[tuple[int, bytes]]] = {}
    await pull.open()
    try:
        seq = first - 1
        while seq < last:
            for msg in await pull.next():
                seq = stream_seq(msg)
                if seq <= last:
                    by_subject.setdefault(msg.subject, []).append((seq, msg.data))
    finally:
        await pull.close()
    return by_subject


@pytest.mark.slow
async def test_a_projector_killed_mid_import_resumes_exactly(make_stack, databases, nats_url, tmp_path):
    """SIGKILL of the projector process while a bulk import is being projected (batches
    committing, directory writes and acks in flight, the next batches fetched): a new projector
    resumes from the two checkpoints, and the read model equals one projected from the stream
    in one go, and every directory key of the import holds its aggregate's state at its last
    event -- nothing lost, nothing from a batch whose predecessor was not done."""
    url = databases.new()
    projectors = [_start_projector(nats_url, url, tmp_path, "projector-k1")]
    try:
        stack = await make_stack(url, projections="projector")
        c, h = stack.client, stack.as_(stack.sys_token)
        js = stack.ctx.js
        first = (await js.stream_info(names.STREAM_PROVISIONING)).state.last_seq + 1
        assert await stack.ctx.readmodel.wait_for(first - 1, timeout=60), "the projector never followed"

        # The import is appended while the projector is stopped, so that it then has a backlog
        # of many batches to work through when the kill comes.
        projectors[0].send_signal(signal.SIGSTOP)
        tag = uuid.uuid4().hex[:8]
        domains = [f"k{i:05d}-{tag}.example" for i in range(IMPORT_DOMAINS)]
        rows = [row for d in domains for row in
                [{"domain": d}, *({"domain": d, "account": f"user{k}"} for k in range(IMPORT_ACCOUNTS))]]
        r = await c.post("/v1/imports", json=rows, headers=h)
        assert r.status_code == 202, r.text
        job_url = f"/v1/imports/{r.json()['id']}"

        async def appended() -> bool:
            job = (await c.get(job_url, headers=h)).json()
            return job["done"] == job["total"]

        await wait_until(appended, timeout=120, what="every import row appended to PROVISIONING")
        last = (await js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
        assert last - first >= IMPORT_DOMAINS * (IMPORT_ACCOUNTS + 2) - 1

        projectors[0].send_signal(signal.SIGCONT)

        async def projecting() -> bool:
            return await stack.ctx.db(checkpoint, READ_MODEL) >= first

        await wait_until(projecting, timeout=60, what="the projector to commit a batch of the import")
        projectors[0].kill()  # SIGKILL
        projectors[0].wait(10)
        at_kill = await stack.ctx.db(checkpoint, READ_MODEL)
        assert at_kill < last, "the kill came after the projector had finished: make the import larger"

        projectors.append(_start_projector(nats_url, url, tmp_path, "projector-k2"))

        async def finished() -> bool:
            return (await c.get(job_url, headers=h)).json()["state"] != "running"

        await wait_until(finished, timeout=180, what="the import to be visible after the restart")
        job = (await c.get(job_url, headers=h)).json()
        assert job["state"] == "done" and job["failed"] == 0, job
        assert job["domains_created"] == IMPORT_DOMAINS and job["accounts_created"] == IMPORT_DOMAINS * IMPORT_ACCOUNTS
        assert await stack.ctx.db(checkpoint, READ_MODEL) == last

        # The read model: equal to one projected from the whole stream by a projection never killed.
        rebuilt = await make_stack()
        now = (await js.stream_info(names.STREAM_PROVISIONING)).state.last_seq  # with the new stack's token
        for s in (stack, rebuilt):
            assert await s.ctx.readmodel.wait_for(now, timeout=120)
        assert await stack.ctx.db(dump_provisioning) == await rebuilt.ctx.db(dump_provisioning)

        # The directory: its checkpoint past the import, and each key of the import exactly its
        # aggregate's state at its last event (a deletion opening its subject -- the import's
        # fence of a new domain's name -- may leave the key missing: edges read both alike).
        kv = await js.key_value(names.BUCKET_DIRECTORY)

        async def directory_done() -> bool:
            return json.loads((await kv.get(POSITION_KEY)).value)["seq"] >= last

        await wait_until(directory_done, timeout=60, what="the directory's checkpoint past the import")
        events = await _stream_events(stack.nc, first, last)
        ours = {s: e for s, e in events.items() if tag in s}
        assert len(ours) == IMPORT_DOMAINS * (IMPORT_ACCOUNTS + 2)

        async def held(key: str) -> dict | None:
            try:
                return json.loads((await kv.get(key)).value)
            except KeyNotFoundError:
                return None

        subjects = sorted(ours)
        for i in range(0, len(subjects), 200):
            chunk = subjects[i:i + 200]
            values = await asyncio.gather(*(held(s[len("colony.prov."):]) for s in chunk))
            for subject, value in zip(chunk, values, strict=True):
                stored = ours[subject]
                state = aggregates.fold(ev.decode(data) for _, data in stored)
                key, wanted = subject_entry(subject, state, stored[-1][0])
                if state is None and len(stored) == 1:
                    assert value in (None, wanted), (subject, value)
                else:
                    assert value == orjson.loads(orjson.dumps(wanted)), (subject, value, wanted)
    finally:
        for proc in projectors:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in projectors:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
