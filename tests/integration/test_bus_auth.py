"""The authenticated bus against the real nats-server, with the configuration `colony up`
generates: no identity, no connection; each role can do what ``names.GRANTS`` says and the
server refuses the rest."""

from __future__ import annotations

import nats
import pytest
from nats.errors import Error as NatsError

from cluster_harness import wait_until
from colony.bus import names
from colony.bus.connection import connect, connect_options
from colony.bus.permissions import generate_identities, inbox_prefix, permissions_for
from colony.bus.schema import ensure_schema
from colony.settings import ConfigError, Settings


class Client:
    """A connection as one role that records the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = None

    async def open(self, url: str, seed) -> Client:
        async def on_error(exc):
            self.errors.append(str(exc).lower())

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **connect_options(seed))
        self.js = self.nc.jetstream(timeout=1.0)
        return self

    async def refused(self, subject_fragment: str) -> bool:
        async def seen():
            return any("permissions violation" in e and subject_fragment.lower() in e for e in self.errors)
        return await wait_until(seen, 10, f"a permissions violation for {subject_fragment}")


@pytest.fixture
async def bus(nats_server):
    operator = await connect(Settings(nats_url=nats_server.url), name="test-operator")
    await ensure_schema(operator.jetstream(), Settings(nats_url=nats_server.url))
    opened: list[Client] = []

    async def as_role(role: str) -> Client:
        client = await Client().open(nats_server.url, nats_server.seed_file(role))
        opened.append(client)
        return client

    yield nats_server, operator, as_role
    for client in opened:
        await client.nc.close()
    await operator.close()


async def test_a_connection_without_credentials_is_refused(nats_server):
    with pytest.raises(Exception) as refused:
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3)
    assert "authorization" in str(refused.value).lower()


async def test_an_unknown_identity_is_refused(nats_server, tmp_path):
    stranger = generate_identities(tmp_path / "elsewhere", roles=("edge",))["edge"]
    with pytest.raises(Exception) as refused:
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3,
                           **connect_options(stranger.seed_file))
    assert "authorization" in str(refused.value).lower()


async def test_an_edge_cannot_write_provisioning_read_credentials_or_delete_streams(bus):
    server, operator, as_role = bus
    edge = await as_role("edge")
    subject = names.provisioning_subject(names.AGG_DOMAIN, "evil.example")

    with pytest.raises(NatsError):
        await edge.js.publish(subject, b"{}")
    assert await edge.refused(subject)
    ojs = operator.jetstream()
    assert (await ojs.stream_info(names.STREAM_PROVISIONING)).state.messages == 0

    # Credentials: the SIP digest service, the provisioning events (password hashes) and
    # the password checks other instances send.
    with pytest.raises(NatsError):
        await edge.nc.request(names.AUTH_SIP_CREDENTIALS, b"{}", timeout=1)
    assert await edge.refused(names.AUTH_SIP_CREDENTIALS)
    with pytest.raises(NatsError):
        await edge.js.pull_subscribe(names.SUBJECTS_PROVISIONING, stream=names.STREAM_PROVISIONING)
    assert await edge.refused(f"$JS.API.CONSUMER.CREATE.{names.STREAM_PROVISIONING}")
    with pytest.raises(NatsError):
        await edge.js.get_msg(names.STREAM_PROVISIONING, seq=1)
    await edge.nc.subscribe(names.AUTH_CHECK)
    assert await edge.refused(names.AUTH_CHECK)
    await edge.nc.subscribe("_INBOX.>")  # everybody's replies, credentials included
    assert await edge.refused("_INBOX.>")

    with pytest.raises(NatsError):
        await edge.js.delete_stream(names.STREAM_PROVISIONING)
    assert await edge.refused(f"$JS.API.STREAM.DELETE.{names.STREAM_PROVISIONING}")
    with pytest.raises(NatsError):
        await edge.js.purge_stream(names.STREAM_MAIL)
    await ojs.stream_info(names.STREAM_PROVISIONING)  # still there

    # ... and what an edge does need still works.
    await edge.js.publish(names.mail_subject("local", "acme.example"), b"mail")
    directory = await edge.js.key_value(names.BUCKET_DIRECTORY)
    await ojs.key_value(names.BUCKET_DIRECTORY)
    await (await ojs.key_value(names.BUCKET_DIRECTORY)).put("domain.acme-example", b"{}")
    assert (await directory.get("domain.acme-example")).value == b"{}"
    with pytest.raises(NatsError):
        await directory.put("domain.evil", b"{}")


async def test_only_controllers_write_the_lease_and_only_the_admin_api_writes_provisioning(bus):
    server, operator, as_role = bus
    controller, admin, edge = await as_role("controller"), await as_role("admin-api"), await as_role("edge")
    subject = names.provisioning_subject(names.AGG_ADDRESS, "amy@acme.example")

    with pytest.raises(NatsError):
        await controller.js.publish(subject, b"{}")
    assert await controller.refused(subject)
    ack = await admin.js.publish(subject, b"{}")
    assert ack.stream == names.STREAM_PROVISIONING
    # ... except a domain move's phases and progress, which the controller drives
    for kind in (names.AGG_DOMAIN, names.AGG_DOMAIN_MOVE):
        ack = await controller.js.publish(names.provisioning_subject(kind, "acme.example"), b"{}")
        assert ack.stream == names.STREAM_PROVISIONING
    for other in (names.AGG_TOKEN, names.AGG_COS, names.AGG_DOMAIN_ALIAS):
        with pytest.raises(NatsError):
            await controller.js.publish(names.provisioning_subject(other, "acme.example"), b"{}")

    leases = await controller.js.key_value(names.BUCKET_LEASES)
    await leases.put(names.CONTROLLER_LEASE_KEY, b"{}")
    for other in (admin, edge):
        kv = await other.js.key_value(names.BUCKET_LEASES)  # everyone may read it ...
        assert (await kv.get(names.CONTROLLER_LEASE_KEY)).value == b"{}"
        with pytest.raises(NatsError):  # ... nobody else may write it
            await kv.put(names.CONTROLLER_LEASE_KEY, b"mine")
    assert (await leases.get(names.CONTROLLER_LEASE_KEY)).value == b"{}"


async def test_a_reply_reaches_only_its_asker(bus):
    """Replies travel to the asker's private inbox, which the answering role may publish to
    (allow_responses) but no other role may subscribe to."""
    server, operator, as_role = bus
    admin, edge = await as_role("admin-api"), await as_role("edge")

    async def answer(msg):
        await msg.respond(b"ok:" + msg.data)

    await admin.nc.subscribe(names.AUTH_CHECK, queue=names.QUEUE_ADMIN, cb=answer)
    await admin.nc.flush()

    async def asked():
        try:
            return await edge.nc.request(names.AUTH_CHECK, b"x", timeout=5)
        except nats.errors.NoRespondersError:  # the server has not seen the subscription yet
            return None
    assert (await wait_until(asked, 10, "an answer")).data == b"ok:x"
    edge_key = server.identities["edge"].public_key
    snoop = await as_role("mailstore")
    await snoop.nc.subscribe(inbox_prefix(edge_key) + ".>")
    assert await snoop.refused(inbox_prefix(edge_key))


def test_every_role_has_a_private_inbox_and_nobody_but_the_operator_deletes():
    for role, grant in names.GRANTS.items():
        perms = permissions_for(grant, "UKEY")
        if role == names.ROLE_OPERATOR:
            assert perms is None
            continue
        assert perms["subscribe"]["allow"][0] == "_INBOX.UKEY.>"
        assert not any(s.startswith("_INBOX") and s != "_INBOX.UKEY.>" for s in perms["subscribe"]["allow"])
        assert not any(".DELETE." in s and "CONSUMER" not in s and "MSG.DELETE" not in s for s in perms["publish"]["allow"])
        assert ">" not in perms["publish"]["allow"]


def test_a_seed_readable_by_others_is_refused_before_connecting(nats_server, tmp_path):
    seed = tmp_path / "loose.nk"
    seed.write_bytes(nats_server.seed_file("edge").read_bytes())
    seed.chmod(0o644)
    with pytest.raises(ConfigError, match="COLONY_NATS_NKEY_SEED_FILE"):
        connect_options(seed)
    with pytest.raises(ConfigError, match="colony bus init"):
        connect_options(tmp_path / "missing.nk")


async def test_a_mail_store_may_send_mail_on_to_another_regions_subject(bus):
    """Mail for a domain moving away that still reaches a region's store is sent on to the
    target region's MAIL subject (colony_mailstore.delivery); the SIP farm may not."""
    server, operator, as_role = bus
    store, farm = await as_role("mailstore"), await as_role("sipfarm")
    ack = await store.js.publish(names.mail_subject("us", "acme.example", 3), b"mail")
    assert ack.stream == names.STREAM_MAIL
    with pytest.raises(NatsError):
        await farm.js.publish(names.mail_subject("us", "acme.example", 3), b"mail")


async def test_a_domain_moves_questions_go_from_the_controller_to_a_regions_mail_stores(bus):
    """The primary's controller asks another region's mail stores to pull an account, count a
    domain's sessions and remove its copy; the stores answer (queue group), an edge may neither
    ask nor answer, and a store may not ask (only the controller drives a move)."""
    server, operator, as_role = bus
    controller, store, edge = await as_role("controller"), await as_role("mailstore"), await as_role("edge")

    async def answer(msg):
        await msg.respond(b"ok:" + msg.subject.encode())

    await store.nc.subscribe(names.DOMAIN_MOVE_REQUESTS, queue=names.QUEUE_DOMAIN_MOVE, cb=answer)
    await store.nc.flush()
    for verb in names.MOVE_VERBS:
        subject = names.domain_move_subject("us", verb)

        async def asked(subject=subject):
            try:
                return await controller.nc.request(subject, b"{}", timeout=5)
            except nats.errors.NoRespondersError:  # the server has not seen the subscription yet
                return None
        assert (await wait_until(asked, 10, f"an answer on {subject}")).data == b"ok:" + subject.encode()
    await edge.nc.subscribe(names.DOMAIN_MOVE_REQUESTS)
    assert await edge.refused("colony.move")
    await store.nc.publish(names.domain_move_subject("eu", names.MOVE_REMOVE), b"{}")
    assert await store.refused("colony.move.eu.remove")


async def test_the_controller_asks_the_admin_api_for_a_domain_s_accounts(bus):
    """A domain move's list of accounts comes from the admin API's read model
    (``colony.dir.accounts``): the controller may ask and the admin API answer; an edge may
    not ask for a whole domain's addresses."""
    server, operator, as_role = bus
    controller, admin, edge = await as_role("controller"), await as_role("admin-api"), await as_role("edge")

    async def answer(msg):
        await msg.respond(b'{"accounts": []}')

    await admin.nc.subscribe(names.DIRECTORY_DOMAIN_ACCOUNTS, queue=names.QUEUE_ADMIN, cb=answer)
    await admin.nc.flush()

    async def asked():
        try:
            return await controller.nc.request(names.DIRECTORY_DOMAIN_ACCOUNTS, b"{}", timeout=5)
        except nats.errors.NoRespondersError:  # the server has not seen the subscription yet
            return None
    assert (await wait_until(asked, 10, "an answer on colony.dir.accounts")).data == b'{"accounts": []}'
    await edge.nc.publish(names.DIRECTORY_DOMAIN_ACCOUNTS, b"{}")
    assert await edge.refused("colony.dir.accounts")


async def test_a_store_passes_a_move_question_on_to_its_peers_and_nobody_else_may(bus):
    """The store that took a move question asks its region's peers on
    ``colony.mailstore.move.<peer>.<verb>`` (colony_mailstore.moves); an edge or a controller
    may neither ask nor answer there."""
    server, operator, as_role = bus
    asker, peer = await as_role("mailstore"), await as_role("mailstore")
    controller, edge = await as_role("controller"), await as_role("edge")

    async def answer(msg):
        await msg.respond(b"peer:" + msg.subject.encode())

    await peer.nc.subscribe(names.mailstore_move_subject("mailstore-2", names.MOVE_VERBS[0]).rpartition(".")[0] + ".*",
                            cb=answer)
    await peer.nc.flush()
    for verb in names.MOVE_VERBS:
        subject = names.mailstore_move_subject("mailstore-2", verb)

        async def asked(subject=subject):
            try:
                return await asker.nc.request(subject, b"{}", timeout=5)
            except nats.errors.NoRespondersError:
                return None
        assert (await wait_until(asked, 10, f"an answer on {subject}")).data == b"peer:" + subject.encode()
    for other in (controller, edge):
        await other.nc.publish(names.mailstore_move_subject("mailstore-2", names.MOVE_REMOVE), b"{}")
        assert await other.refused("colony.mailstore.move")
    await edge.nc.subscribe(names.MAILSTORE_MOVE)
    assert await edge.refused("colony.mailstore.move")


def test_a_domain_moves_questions_cross_the_leafnode_link():
    """They are asked from the primary region of another region's stores, so no region-local
    prefix (denied on the leafnode link, infra/nats/regions/*.conf) may cover them."""
    from fnmatch import fnmatchcase

    def covered(subject: str, pattern: str) -> bool:
        head = pattern.removesuffix(">")
        return subject.startswith(head) if pattern.endswith(">") else fnmatchcase(subject, pattern.replace("*", "[!.]*"))

    for verb in names.MOVE_VERBS:
        subject = names.domain_move_subject("us", verb)
        assert not any(covered(subject, p) for p in names.REGION_LOCAL_SUBJECTS), subject
    with pytest.raises(ValueError, match="domain-move"):
        names.domain_move_subject("us", "drop")


async def test_only_the_edge_publishes_into_another_regions_mail(bus):
    """An edge publishes mail for a domain homed in another region straight into that region's
    MAIL (colony_edge.acceptance); no other role may put anything there."""
    server, operator, as_role = bus
    edge, store = await as_role("edge"), await as_role("mailstore")
    home = names.mail_home_subject("eu", "acme.example", 3)
    await edge.nc.publish(home, b"mail")
    await edge.nc.publish(names.provisioning_subject("domain", "x.example"), b"{}")  # a marker it may not send
    assert await edge.refused("colony.prov")
    assert not any("colony.mailhome" in e for e in edge.errors)  # the server answers in order
    await store.nc.publish(home, b"mail")
    assert await store.refused("colony.mailhome")


async def test_the_edge_reads_mails_state_but_takes_nothing_from_it(bus):
    """Before it sends a region's mail across again, an edge asks how much of that region's
    mail its own MAIL still holds (colony_edge.acceptance): STREAM.INFO, and nothing else."""
    server, operator, as_role = bus
    edge = await as_role("edge")
    await operator.jetstream().publish(names.mail_subject("eu", "acme.example", 3), b"mail")
    info = await edge.js.stream_info(names.STREAM_MAIL, subjects_filter=names.mail_region_filter("eu"))
    assert sum(info.state.subjects.values()) == 1
    await edge.nc.publish(f"$JS.API.CONSUMER.CREATE.{names.STREAM_MAIL}", b"{}")
    assert await edge.refused(f"CONSUMER.CREATE.{names.STREAM_MAIL}")
