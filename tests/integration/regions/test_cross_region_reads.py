"""Reading another region's cluster through its JetStream domain, on the authenticated bus:
an eu edge finds the us mail store of an account homed in us (node records and ownership
lease read over the leafnode link), the admin API reads every region's instances, and neither may
write anything in the other region."""

from __future__ import annotations

from datetime import datetime, timezone

import nats
import pytest

from cluster_harness import wait_until
from colony.bus import names
from colony.bus.schema import ensure_schema
from colony.cluster.lease import LeaseRecord
from colony.cluster.membership import NodeRecord, NodeState
from colony.cluster.view import cluster_view, regions_view
from colony.natsd import EmbeddedNats
from colony.settings import Settings
from colony_edge.access_proxy import StoreFinder
from tools import free_ports

REGIONS = ("eu", "us")


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (tests/tools.py: one the kernel handed out
    for a bind may go to the next outgoing connection before the server binds it)."""
    return free_ports(1)[0]


@pytest.fixture
async def regions(tmp_path):
    leaf = _free_port()
    hub = EmbeddedNats(tmp_path / "hub", server_name="hub", jetstream_domain=names.HUB_JS_DOMAIN,
                       leafnode_listen=f"127.0.0.1:{leaf}", sync_always=False)
    hub.start()
    servers = {r: EmbeddedNats.authenticated(tmp_path / r, tmp_path / r / "bus", server_name=r,
                                             jetstream_domain=names.js_domain(r),
                                             leafnode_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
                                             leafnode_deny=names.REGION_LOCAL_SUBJECTS, sync_always=False)
               for r in REGIONS}
    conns = []

    async def connect(region: str, role: str):
        nc = await nats.connect(servers[region].url, **servers[region].client_options(role))
        conns.append(nc)
        return nc

    try:
        for server in servers.values():
            server.start()
        for region in REGIONS:
            op = await connect(region, "operator")
            await ensure_schema(op.jetstream(), Settings(region=region, regions=",".join(REGIONS), primary_region="eu"))
        yield connect
    finally:
        for nc in conns:
            await nc.close()
        for server in (*servers.values(), hub):
            server.stop()


def _record(node_id: str, role: str, addresses: dict[str, str]) -> bytes:
    now = datetime.now(timezone.utc)
    return NodeRecord(id=node_id, role=role, state=NodeState.READY, host="127.0.0.1", pid=1, version="t",
                      started_at=now, addresses=addresses).encode()


async def test_an_eu_edge_finds_the_us_store_and_writes_nothing_there(regions):
    us_op = await regions("us", "operator")
    us_js = us_op.jetstream()
    nodes = await us_js.key_value(names.BUCKET_NODES)
    owners = await us_js.key_value(names.BUCKET_ACCOUNT_OWNERS)
    for n in (1, 2):
        await nodes.put(names.node_key(f"mailstore-{n}"), _record(f"mailstore-{n}", "mailstore",
                                                                  {"imap-inner": f"127.0.0.1:{6000 + n}"}))
    await owners.put(names.account_owner_key("lee@us.example"), LeaseRecord(holder="mailstore-2").encode())
    # eu's own records: a store that must not be chosen for a us account
    eu_op = await regions("eu", "operator")
    await (await eu_op.jetstream().key_value(names.BUCKET_NODES)).put(
        names.node_key("mailstore-1"), _record("mailstore-1", "mailstore", {"imap-inner": "127.0.0.1:5001"}))

    eu_edge = await regions("eu", "edge")
    finder = StoreFinder(eu_edge, None, domain=names.js_domain("us"))

    async def found():
        try:
            return await finder.target("lee@us.example", "imap-inner", force=True)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
    assert await wait_until(found, 30, "the us store of lee@us.example, read from eu") == "127.0.0.1:6002"
    # without a lease: the rendezvous choice among us's stores, never eu's
    assert await finder.target("kim@us.example", "imap-inner") in ("127.0.0.1:6001", "127.0.0.1:6002")

    # The cross-region grant reads; it does not write, purge or create consumers.
    for subject in (f"$JS.us.API.STREAM.PURGE.KV_{names.BUCKET_NODES}",
                    f"$JS.us.API.CONSUMER.CREATE.KV_{names.BUCKET_NODES}",
                    f"$JS.us.API.STREAM.INFO.{names.STREAM_PROVISIONING}"):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await eu_edge.request(subject, b"{}", timeout=1)


async def test_the_admin_api_reads_every_regions_instances(regions):
    us_op = await regions("us", "operator")
    nodes = await us_op.jetstream().key_value(names.BUCKET_NODES)
    await nodes.put(names.node_key("edge-1"), _record("edge-1", "edge", {"smtp": "127.0.0.1:25"}))
    admin = await regions("eu", "admin-api")

    async def us_view():
        try:
            return await cluster_view(admin, names.js_domain("us"))
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
    view = await wait_until(us_view, 30, "us's instances, read from eu's admin API")
    assert [(v.id, v.role) for v in view] == [("edge-1", "edge")]
    assert await cluster_view(admin) == []  # eu's own bucket is empty: the two are not mixed

    # GET /v1/cluster/nodes: every region's rows with their region; a region that does not
    # answer (here one with no server at all) is named as unreachable, not shown empty.
    await (await (await regions("eu", "operator")).jetstream().key_value(names.BUCKET_NODES)).put(
        names.node_key("controller-1"), _record("controller-1", "controller", {}))
    views, unreachable = await regions_view(admin, "eu", ["eu", "us", "ap"], timeout=2)
    assert sorted((v.region, v.id) for v in views) == [("eu", "controller-1"), ("us", "edge-1")]
    assert unreachable == ["ap"]


async def test_a_domain_moves_questions_reach_the_asked_region_across_the_link(regions):
    """The primary's (eu) controller asks us's mail stores to pull an account (over the
    leafnode link, with the controller's credentials) and eu's own stores for sessions; each
    region's stores hear only their region's questions."""
    from colony import domain_move as dm
    from colony.contracts import move_requests as mr
    from colony_controller.move_port import BusMovePort

    heard: dict[str, list[str]] = {"eu": [], "us": []}

    def store_of(region: str):
        async def serve(msg):
            heard[region].append(msg.subject)
            if msg.subject.endswith(".pull"):
                reply = mr.PullReply(source_messages=1, target_messages=1, source_digest="d", target_digest="d",
                                     source_position=5)
            else:
                reply = mr.SessionsReply(sessions=0, accounts_held=3)
            await msg.respond(reply.model_dump_json().encode())
        return serve

    for region in REGIONS:
        store = await regions(region, "mailstore")
        await store.subscribe(names.domain_move_requests_of(region), queue=names.QUEUE_DOMAIN_MOVE,
                              cb=store_of(region))
        await store.flush()
    controller = await regions("eu", "controller")

    async def no_accounts(domain):
        return []
    port = BusMovePort(controller, no_accounts, epoch=lambda: 1, timeout=2)
    move = dm.Move(domain="acme.example", move_id="m1", source="eu", target="us", phase=dm.Phase.COPYING,
                   since=datetime.now(timezone.utc))

    async def pulled():
        try:
            return await port.copy_account(move, "bob@acme.example", 1, 0)
        except mr.MoveRequestError:  # the us store's interest has not crossed the link yet
            return None
    report = await wait_until(pulled, 30, "us's store to answer the pull across the link")
    assert report.source_position == 5
    assert await port.source_sessions(move) == 0
    assert await port.source_cleaned(move) is False
    assert set(heard["us"]) == {"colony.move.us.pull"}
    assert set(heard["eu"]) == {"colony.move.eu.sessions"}


async def test_a_controller_may_restart_its_regions_sources(regions):
    """The controller's identity may do what colony_controller.source_keeper does: read its
    sourcing streams, ask the other region's JetStream for its stream, update the stream. A
    permission missing would fail silently there (no answer is read as a region not there)."""
    from colony.regions import SourceRestarts
    from colony_controller.source_keeper import SourceKeeper

    eu_ctl = await regions("eu", "controller")
    settings = Settings(region="eu", regions=",".join(REGIONS), primary_region="eu")
    keeper = SourceKeeper(eu_ctl, settings, restarts=SourceRestarts(stale_after=0.0))  # every source is stale

    async def restarted():
        return await keeper.step()
    due = await wait_until(restarted, 30, "the controller to restart eu's sources")
    assert {(s.stream, s.region) for s in due} == {(names.STREAM_MAIL, "us"), (names.STREAM_USAGE, "us"),
                                                   (names.STREAM_AUDIT, "us")}
    us_op = await regions("us", "operator")
    await us_op.jetstream().publish(names.mail_subject("eu", "acme.example"), b"after the restart")
    eu_js = (await regions("eu", "operator")).jetstream()

    async def crossed():
        return (await eu_js.stream_info(names.STREAM_MAIL)).state.messages == 1
    await wait_until(crossed, 30, "us's mail in eu's MAIL after the restart")
